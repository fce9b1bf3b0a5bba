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
    __tracebackhide__ = True  # pytest reports the caller's line, not this one
    if strict():
        pytest.fail(f"{reason} (CI=true: a missing requirement fails the test instead of skipping it)", pytrace=False)
    pytest.skip(reason)


def need(condition: Any, reason: str) -> None:
    """Carry on when `condition` holds; else skip, or (CI=true) fail, with `reason`."""
    __tracebackhide__ = True
    if not condition:
        missing(reason)


def import_or_missing(module: str, reason: str | None = None) -> ModuleType:
    """pytest.importorskip that fails under CI=true (usable at module level)."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = reason or f"could not import {module!r}: {exc}"
        if strict():
            pytest.fail(f"{why} (CI=true: a missing requirement fails instead of skipping)", pytrace=False)
        pytest.skip(why, allow_module_level=True)


def requirement(reason: str | None) -> pytest.MarkDecorator:
    """A mark for a test or a module: `reason` None means the requirement is met. In place of
    `pytest.mark.skipif(cond, reason=...)`; tests/conftest.py acts on it (see `apply_marks`)."""
    return getattr(pytest.mark, MARK)(reason)


def _unmet(item: pytest.Item) -> str | None:
    for mark in item.iter_markers(MARK):
        if mark.args and mark.args[0]:
            return str(mark.args[0])
    return None


def apply_marks(items: list[pytest.Item]) -> None:
    """For tests/conftest.py at collection: locally, an unmet `requirement()` becomes a plain skip
    mark (reported at the test's own line); under CI=true, `check_marks` fails the test instead."""
    if strict():
        return
    for item in items:
        if reason := _unmet(item):
            item.add_marker(pytest.mark.skip(reason=reason))


def check_marks(item: pytest.Item) -> None:
    """For tests/conftest.py before each test: fail (CI=true) for an unmet `requirement()`."""
    __tracebackhide__ = True
    if reason := _unmet(item):
        missing(reason)
