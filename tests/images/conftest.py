"""The image tests' fixtures (client, images) and names live in tests/support/images.py, shared with
tests/models; this conftest skips the folder where the Docker SDK is not installed."""

import pytest

pytest.importorskip("docker")
