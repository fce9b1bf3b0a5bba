"""What a test needs from the machine (a Docker engine, the Lambda emulator, Debian's darknet, a
linter binary): on a developer's machine a missing one skips the test and says why; in CI
(`CI=true`, as CI services set it and .ci/run does) it fails the test with the same reason, so a
whole suite cannot vanish behind a skip.

    need(shutil.which("darknet"), "the darknet package is not installed")   # in a test or fixture
    missing("no Docker engine reachable ...")                               # skip / fail at once
    docker = import_or_missing("docker", "the docker SDK is not installed")  # a module-level import
    needs_darknet = requirement(darknet_missing())                          # a mark: reason or None

Optional data (sample recordings) and optional tools that only widen a test keep plain skips.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, NoReturn

import pytest

MARK = "requires"  # the marker `requirement()` sets; tests/conftest.py acts on it before each test


def strict() -> bool:
    """True in CI: a missing requirement is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip for this reason, or (CI=true) fail for it."""
    if strict():
        pytest.fail(f"{reason} (CI=true: a missing requirement fails the test instead of skipping it)", pytrace=False)
    pytest.skip(reason)


def need(condition: Any, reason: str) -> None:
    """Carry on when `condition` holds; else skip, or (CI=true) fail, with `reason`."""
    if not condition:
        missing(reason)


def import_or_missing(module: str, reason: str | None = None) -> ModuleType:
    """pytest.importorskip that fails under CI=true (usable at module level)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = reason or f"could not import {module!r}: {exc}"
        if strict():
            pytest.fail(f"{why} (CI=true: a missing requirement fails instead of skipping)", pytrace=False)
        pytest.skip(why, allow_module_level=True)


def requirement(reason: str | None) -> pytest.MarkDecorator:
    """A mark for a test or a module: `reason` None means the requirement is met. In place of
    `pytest.mark.skipif(cond, reason=...)`; tests/conftest.py calls `missing(reason)` in setup."""
    return getattr(pytest.mark, MARK)(reason)


def check_marks(item: pytest.Item) -> None:
    """For tests/conftest.py: act on every `requirement()` mark of a test before it runs."""
    for mark in item.iter_markers(MARK):
        reason = mark.args[0] if mark.args else None
        if reason:
            missing(reason)
