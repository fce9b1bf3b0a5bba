"""tests/support/requirements.py: a missing engine, emulator or package skips locally and fails in CI."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
from tests.support.requirements import apply_marks, check_marks

def pytest_collection_modifyitems(items):
    apply_marks(items)

def pytest_runtest_setup(item):
    check_marks(item)
"""

TESTS = """
import pytest
from tests.support.requirements import missing, need, requirement

def test_need_met():
    need(True, "never shown")

def test_need_unmet():
    need(None, "no engine here")

@requirement(None)
def test_mark_met():
    pass

@requirement("no darknet here")
def test_mark_unmet():
    pass

@pytest.fixture
def engine():
    missing("no emulator here")

def test_fixture_unmet(engine):
    pass
"""

MODULE_IMPORT = """
from tests.support.requirements import import_or_missing

nothing = import_or_missing("conveyor_no_such_module", "the no-such extra is not installed")

def test_never_runs():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    requires(reason): a machine requirement\n")
    pytester.makepyfile(test_needs=TESTS)
    return pytester


def test_locally_a_missing_requirement_skips_with_its_reason(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = project.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, skipped=3)
    # The test's own line, not the helper's, is reported.
    result.stdout.fnmatch_lines_random(
        ["*test_needs.py:*: no engine here", "*test_needs.py:*: no darknet here", "*test_needs.py:*: no emulator here"]
    )


@pytest.mark.parametrize("value", ["true", "1", "True"])
def test_in_ci_a_missing_requirement_fails_with_its_reason(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    result = project.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, errors=2)  # the mark and the fixture act in setup: errors
    result.stdout.fnmatch_lines_random(
        ["*no engine here (CI=true*", "*no darknet here (CI=true*", "*no emulator here (CI=true*"]
    )


def test_ci_false_still_skips(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    project.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2, skipped=3)


@pytest.mark.parametrize(("ci", "outcome"), [(None, {"skipped": 1}), ("true", {"errors": 1})])
def test_a_missing_module_skips_the_module_or_fails_collection_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: dict[str, int]
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_module_import=MODULE_IMPORT)
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(**outcome)
    result.stdout.fnmatch_lines(["*the no-such extra is not installed*"])
