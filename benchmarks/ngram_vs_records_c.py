"""Our n-gram kernels side by side with the records' own C state, in interleaved rounds.

    python benchmarks/ngram_vs_records_c.py --c-source PATH/online_ngram_state.c --tokens 10000000 --rounds 5

The C file is the records' token n-gram state (openai/parameter-golf, e.g. PR #2018's
records/track_10min_16mb/2026-04-30_GatedXSA_LQERTop1_IntimerNgramTTT/online_ngram_state.c);
it is not part of evalkit: pass its path. It is compiled here (gcc -O3 -march=native) and
driven through ctypes on its token-only path (context of 15 tokens = order 16, the path the
records' tilt uses), its table sized as the record sizes it (2^ceil(log2(N / 0.55)) slots).
Each round runs, each in a fresh process and on the same stream as
``ngram_throughput.py`` (memory warmed the same way): the C state, then every --spec's
kernel (``ngram_throughput.py --skip-engine``). Figures are tokens per CPU-second of one
core; the medians and the per-round ratio records-preset / C are printed at the end, the
last line ``records_over_c <float>`` (median over rounds).
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ngram_throughput import default_warm_gb, load_stream, warm_memory  # noqa: E402

RECORDS = "tilt:preset=records"
CONTEXT = 15  # the records' token context length (order 16)


def record_table_bits(tokens: int) -> int:
    """The record's sizing: 2^ceil(log2(N / 0.55)) slots, between 2^12 and 2^28."""
    return min(max(math.ceil(math.log2(max(tokens / 0.55, 1))), 12), 28)


def compile_c_state(source: Path, build: Path) -> Path:
    """gcc the records' C file once, into build/; exits 2 with gcc's first error line."""
    lib_path = build / "online_ngram_state.so"
    out = subprocess.run(["gcc", "-O3", "-march=native", "-shared", "-fPIC", "-o", str(lib_path), str(source)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        first = next((line for line in out.stderr.splitlines() if "error" in line), out.stderr.strip())
        print(f"ngram_vs_records_c.py: --c-source {source} does not compile: {first}", file=sys.stderr)
        sys.exit(2)  # bad input, as argparse's errors
    return lib_path


def load_c_state(lib_path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(lib_path))
    lib.online_ngram_state_create.restype = ctypes.c_void_p
    lib.online_ngram_state_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.online_ngram_state_destroy.argtypes = [ctypes.c_void_p]
    lib.online_ngram_state_process_chunk_token_only.restype = ctypes.c_int
    lib.online_ngram_state_process_chunk_token_only.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint16), ctypes.c_int64,
        ctypes.POINTER(ctypes.c_uint16), ctypes.POINTER(ctypes.c_float)]
    return lib


def run_c(lib_path: Path, tokens: int, warm_gb: float) -> None:
    """One C run in this process: prints its line and ``c_tokens_per_s``."""
    lib = load_c_state(lib_path)
    if warm_gb > 0:
        print(warm_memory(warm_gb))
    toks = np.ascontiguousarray(load_stream(tokens, 1024, permute=True))
    top = np.zeros(tokens, np.uint16)
    prob = np.zeros(tokens, np.float32)
    bits = record_table_bits(tokens)
    state = lib.online_ngram_state_create(CONTEXT, bits, 12)  # the word table is unused on this path
    if not state:
        sys.exit(f"ngram_vs_records_c.py: the C state could not allocate 2^{bits} slots")
    u16 = ctypes.POINTER(ctypes.c_uint16)
    c0 = time.thread_time()
    rc = lib.online_ngram_state_process_chunk_token_only(
        state, toks.ctypes.data_as(u16), tokens, top.ctypes.data_as(u16),
        prob.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    cpu = time.thread_time() - c0
    lib.online_ngram_state_destroy(state)
    if rc != 0:
        sys.exit(f"ngram_vs_records_c.py: the C state returned {rc}")
    hinted = prob >= 0.8  # the records' gate
    print(f"C state: {tokens / cpu:,.0f} tokens per CPU-second, 2^{bits} slots; hinted {int(hinted.sum()):,}, "
          f"right {int((hinted & (top == toks)).sum()):,}")
    print(f"c_tokens_per_s {tokens / cpu:.1f}")


def last_figure(out: str, name: str) -> float:
    found = re.findall(rf"^{name} ([0-9.]+)$", out, flags=re.M)
    if not found:
        raise RuntimeError(f"no '{name}' line in:\n{out}")
    return float(found[-1])


def run(args: list[str]) -> str:
    """A child run's stdout; a failed child ends this script with its last error line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"ngram_vs_records_c.py: {Path(args[0]).name} {' '.join(args[1:3])} failed: {tail}")
    return out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--c-source", type=Path, help="path to the records' online_ngram_state.c")
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spec", action="append", help=f"--ngram specs to time (default {RECORDS}, "
                    "tilt:orders=2-11, mix:orders=2-11); repeat the flag for several")
    ap.add_argument("--warm-gb", type=float, default=None, help="as ngram_throughput.py (default 120 B/token, >= 1)")
    ap.add_argument("--run-c", type=Path, help=argparse.SUPPRESS)  # the compiled state: one C run (a child)
    args = ap.parse_args()
    if args.run_c:
        return run_c(args.run_c, args.tokens, args.warm_gb)
    if args.c_source is None:
        ap.error("--c-source PATH is required: online_ngram_state.c from openai/parameter-golf's records")
    if not args.c_source.is_file():
        ap.error(f"--c-source {args.c_source}: no such file (online_ngram_state.c from openai/parameter-golf)")
    if args.tokens < 1000 or args.rounds < 1:
        ap.error("--tokens must be >= 1000 and --rounds >= 1")
    warm = args.warm_gb if args.warm_gb is not None else default_warm_gb(args.tokens)
    if warm < 0:
        ap.error("--warm-gb must be >= 0 (0 skips the memory warm-up)")
    with tempfile.TemporaryDirectory() as build:
        compare(compile_c_state(args.c_source, Path(build)), specs_with_records(args.spec), args.tokens,
                args.rounds, warm)


def specs_with_records(specs: list[str] | None) -> list[str]:
    specs = specs or [RECORDS, "tilt:orders=2-11", "mix:orders=2-11"]
    return specs if RECORDS in specs else [RECORDS, *specs]  # the headline is records / C


def compare(lib_path: Path, specs: list[str], tokens: int, rounds: int, warm: float) -> None:
    """Interleaved rounds, each run a fresh process; prints medians, the ratio last."""
    figures: dict[str, list[float]] = {"C": [], **{s: [] for s in specs}}
    for r in range(1, rounds + 1):
        print(f"round {r}: load average {os.getloadavg()[0]:.2f}", flush=True)
        out = run([__file__, "--run-c", str(lib_path), "--tokens", str(tokens), "--warm-gb", str(warm)])
        figures["C"].append(last_figure(out, "c_tokens_per_s"))
        for spec in specs:
            out = run([str(HERE / "ngram_throughput.py"), "--spec", spec, "--tokens", str(tokens),
                       "--no-cold-compile", "--skip-engine", "--warm-gb", str(warm)])
            figures[spec].append(last_figure(out, "ngram_kernel_tokens_per_s"))
        print("  " + "  ".join(f"{k} {v[-1] / 1e6:.2f}M" for k, v in figures.items()), flush=True)
    for name, values in figures.items():
        print(f"{name}: median {statistics.median(values) / 1e6:.2f}M tokens per CPU-second "
              f"({min(values) / 1e6:.2f}-{max(values) / 1e6:.2f}M over {len(values)} rounds)")
    ratios = [a / b for a, b in zip(figures[RECORDS], figures["C"])]
    print(f"records preset / C per round: {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"records_over_c {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
