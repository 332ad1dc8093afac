"""Benchmark scripts keep their interfaces: they run on a small input, the last line is the
headline figure, and bad flags exit 2 with one line (figures themselves are not tested)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_shared

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_ngram_throughput_prints_the_engine_figure_last_and_warms_memory_first():
    require_shared()
    out = run_script("benchmarks/ngram_throughput.py", "--spec", "tilt:preset=records", "--tokens", "30000",
                     "--no-cold-compile", "--warm-gb", "0.05")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"ngram_tokens_per_s \d+\.\d", lines[-1]), lines[-1]
    warm = [i for i, line in enumerate(lines) if line.startswith("memory warm-up: 0.05 GiB")]
    kernel = [i for i, line in enumerate(lines) if line.startswith("kernel:")]
    assert warm and kernel and warm[0] < kernel[0], out.stdout
    assert any(line.startswith("engine:") for line in lines)


def test_ngram_throughput_refuses_a_negative_warm_up():
    out = run_script("benchmarks/ngram_throughput.py", "--tokens", "1000", "--warm-gb", "-1")
    assert out.returncode == 2
    assert "--warm-gb must be >= 0" in out.stderr
