"""The reliability suite's ledger: each test adds what it injected and checked, and the run
ends with a summary of those figures (items lost must be 0)."""

from __future__ import annotations

import collections
import json
import os

import pytest

FIGURES = (
    ("faults_injected", "storage faults injected (drops, 429/503, lost replies, slow replies)"),
    ("retries_made", "gs:// requests retried by bittune"),
    ("processes_killed", "processes killed with SIGKILL mid-way"),
    ("items_checked", "items checked end to end"),
    ("items_rejected", "items rejected with a reason"),
    ("items_lost", "items lost (must be 0)"),
    ("bad_parameters_refused", "bad parameters refused up front"),
    ("files_scanned", "files and logs scanned for secrets"),
    ("secrets_found", "secrets found (must be 0)"),
)
LEDGER: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="session")
def ledger() -> collections.Counter[str]:
    return LEDGER


def pytest_terminal_summary(terminalreporter) -> None:
    if not LEDGER:
        return
    terminalreporter.section("bittune reliability summary")
    for key, label in FIGURES:
        terminalreporter.write_line(f"{LEDGER[key]:>10,}  {label}")
    path = os.environ.get("BITTUNE_RELIABILITY_SUMMARY")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({key: LEDGER[key] for key, _ in FIGURES}, f, indent=2)
