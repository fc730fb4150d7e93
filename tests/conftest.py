"""Shared test setup, and capability skips that CI can forbid.

A test that cannot run here skips with a message `needs CAP: why`, CAP being one of
CAPABILITIES. Such a skip is visible (`-rs` is in pytest's addopts), and under
FLEETSCAN_REQUIRE=cap,cap (or `all`) it becomes a failure: a machine that is supposed to have
the capability must not pass by skipping the tests that use it (.ci/run sets this).
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator

import pytest

CAPABILITIES = frozenset(
    {
        "kvm",
        "ssh",
        "netns",
        "kernels",
        "oldpython",
        "chromium",
        "redmine",
        "qemu",
        "lab",
        "rpm",
        "bpftool",
    }
)
_NEEDS = re.compile(r"needs (?P<cap>[a-z]+): ")


def required() -> frozenset[str]:
    """The capabilities FLEETSCAN_REQUIRE names (`all` for every one); unknown names are errors."""
    names = {
        n.strip().lower() for n in os.environ.get("FLEETSCAN_REQUIRE", "").split(",") if n.strip()
    }
    if "all" in names:
        return CAPABILITIES
    unknown = names - CAPABILITIES
    if unknown:
        raise pytest.UsageError(
            f"FLEETSCAN_REQUIRE: unknown capability {', '.join(sorted(unknown))} "
            f"(known: all, {', '.join(sorted(CAPABILITIES))})"
        )
    return frozenset(names)


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The message of a skip report (`Skipped: ` stripped), or None if it is not a skip."""
    if not report.skipped:
        return None
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        message = str(longrepr[2])
    else:
        message = str(longrepr)
    return message.removeprefix("Skipped: ")


def required_capability(message: str, caps: frozenset[str]) -> str | None:
    """CAP if `message` is a `needs CAP:` skip of a required capability."""
    match = _NEEDS.match(message)
    if match and match["cap"] in caps:
        return match["cap"]
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_REQUIRED] = required()


_REQUIRED = pytest.StashKey[frozenset[str]]()


def _fail_required_skip(
    config: pytest.Config, report: pytest.TestReport | pytest.CollectReport
) -> None:
    message = skip_reason(report)
    if message is None:
        return
    cap = required_capability(message, config.stash[_REQUIRED])
    if cap is None:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"FLEETSCAN_REQUIRE includes {cap}, but the test skipped: {message}\n"
        f"(this machine is supposed to have {cap}; fix the machine or drop {cap} from FLEETSCAN_REQUIRE)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    _fail_required_skip(item.config, outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, None]:
    outcome = yield
    _fail_required_skip(collector.config, outcome.get_result())


@pytest.fixture(autouse=True)
def _history_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command records history by default: keep it out of the tester's own state dir."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
