"""The sending benchmark's harness runs (quick mode, one scenario): it is how issue 14's figures are taken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_send_benchmark_runs_in_quick_mode_and_sends_everyone_once() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FINEWS_CONFIG", "FINEWS_SECRET_KEY")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "send.py"), "--quick", "--subscribers", "40",
                           "--scenarios", "sqlite"], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    [result] = [line for line in lines if line.startswith("sqlite ")]
    assert "40 of 40 in" in result and "recipients with two copies: 0 (same Message-ID: 0)" in result, result
    assert any(line.startswith("start-up (sqlite: the command on an empty database") for line in lines), lines
