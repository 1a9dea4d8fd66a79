"""examples/ run as written (`make examples` runs them against the demo cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

EXPECTED = {
    "approval": ["stage: waiting for a manager", "result: reimbursed 4200 cents to kim"],
    "payouts": ["paid in total: 21000 cents"],
    "booking": [
        "compensations run: ['release', 'release']",
        "5: release -> hotel released",
        "6: release -> flight released",
    ],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_runs(example: str, config_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / f"{example}.py")],
        env={**os.environ, "SHARDFLOW_CONFIG": str(config_file), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in EXPECTED[example]:
        assert line in done.stdout, done.stdout
