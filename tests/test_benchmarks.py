"""Benchmark scripts keep their interfaces: they run on a small input, the last line is the
headline figure, and bad flags exit 2 with one line (figures themselves are not tested)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# A stand-in with the records' C interface: it hints token 7 with probability 1 everywhere.
FAKE_C_STATE = r"""
#include <stdint.h>
#include <stdlib.h>
void *online_ngram_state_create(int ctx_len, int token_bits, int within_bits) { return malloc(8); }
void online_ngram_state_destroy(void *p) { free(p); }
int online_ngram_state_process_chunk_token_only(void *p, const uint16_t *tokens, int64_t n,
                                                uint16_t *top, float *prob) {
    for (int64_t i = 0; i < n; ++i) { top[i] = 7; prob[i] = 1.0f; }
    return 0;
}
"""


def test_ngram_vs_records_c_compiles_the_given_source_and_prints_the_ratio_last(tmp_path):
    require_shared()
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = tmp_path / "online_ngram_state.c"
    src.write_text(FAKE_C_STATE)
    out = run_script("benchmarks/ngram_vs_records_c.py", "--c-source", str(src), "--tokens", "20000",
                     "--rounds", "2", "--spec", "tilt:orders=2-4", "--warm-gb", "0")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"records_over_c \d+\.\d{3}", lines[-1]), lines[-1]
    assert any(line.startswith("tilt:orders=2-4: median") for line in lines)
    assert any(line.startswith("tilt:preset=records: median") for line in lines)  # always timed: the headline


def test_ngram_vs_records_c_names_a_missing_source():
    out = run_script("benchmarks/ngram_vs_records_c.py", "--c-source", "/no/such/online_ngram_state.c")
    assert out.returncode == 2
    assert "--c-source /no/such/online_ngram_state.c: no such file" in out.stderr


def test_ngram_vs_records_c_says_in_one_line_that_a_source_does_not_compile(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = tmp_path / "online_ngram_state.c"
    src.write_text("int broken( {\n")
    out = run_script("benchmarks/ngram_vs_records_c.py", "--c-source", str(src), "--tokens", "20000")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "does not compile" in out.stderr, out.stderr
