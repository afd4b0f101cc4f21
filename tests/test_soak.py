"""The reliability soak (bench/soak.py) in its quick form, as a test: a real gateway process
with Redis limits in front of a fake upstream whose faults each request picks, through
upstream faults, clients leaving, a frozen Redis, SIGTERM and SIGKILL. Every run must hold."""

from __future__ import annotations

import subprocess
import sys

from tests.gateway_process import ROOT


def test_every_run_of_the_quick_soak_holds() -> None:
    done = subprocess.run(
        [sys.executable, "bench/soak.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    table = [
        line
        for line in done.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| run |")
    ]
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert len(table) == 5, done.stdout
    assert all(line.endswith("| held |") for line in table), done.stdout
