"""benchmarks/gpu_proof.py as its tests run it: a child process from the repository root, with the
checkout's gpuwatch first on its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROOF = ROOT / "benchmarks" / "gpu_proof.py"


def run_proof(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python benchmarks/gpu_proof.py ARGS`, its output captured as text."""
    return subprocess.run(
        [sys.executable, str(PROOF), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdin=subprocess.DEVNULL,
    )
