"""Throughput and memory of an n-gram mixer: the engine path users pay, and the kernel alone.

    python benchmarks/ngram_throughput.py --spec tilt:preset=records --tokens 10000000

Stream: a validation shard of ../shared/corpus (FineWeb text: sp1024 628k tokens, or sp8192
with --vocab 8192), repeated to N tokens. Every repetition after the first relabels the
vocabulary with a fresh random permutation, so repeated passes add new n-grams as fresh text
would (an honest memory figure; --plain-repeat would stop the store growing).

kernel: one ``mixer.advance`` call over positions 1..N-1 (score t, learn t, t+1, ...), the
        whole-range kernel with no Python per token.
engine: ``EvalContext.score`` on batches of --batch positions, as a window strategy calls it:
        model log-prob rows (float32 (n, V) torch, on this machine's device = CPU) -> entropy
        (float64, only if the mixer needs it), target and hint log-prob gathers, advance,
        combine, the ledger's record_scores and check_learn. The rows are one fixed random
        log-softmax block reused for every batch (the model forward is excluded).
Figures are tokens per CPU-second of this thread (one core; immune to descheduling on a
shared machine); wall figures and the load average are printed next to them.
Memory warm-up: on a VM the first touch of a guest page the host has not backed yet costs
~10 us (measured here: 240 MB in 0.67 s cold, 0.04 s once backed), 16x a page fault whose
page is backed. A 10M-token run touches ~0.5 GB, so whether its pages happened to be
backed moved the records preset's kernel between 2.3M and 4.7M tokens/s in back-to-back
runs. So before any timing the script touches and frees --warm-gb of memory (the guest
hands the same pages out again) and prints what that took; --warm-gb 0 measures the cold
case. On a machine without this cost the warm-up changes nothing. Compile time
(Numba, every kernel) is measured apart, cold in a fresh process and as loaded here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from caches import store  # noqa: E402
from caches.mixer import parse_ngram_spec  # noqa: E402
from evalkit.engine.context import EvalContext, EvalData  # noqa: E402
from evalkit.engine.dist import DistInfo  # noqa: E402
from evalkit.engine.ledger import Ledger  # noqa: E402

SHARDS = {1024: "fineweb_verify200_sp1024_val_000000.bin", 8192: "fineweb_verify200_sp8192_val_000000.bin"}
FULL_SPLIT = 47_851_520  # tokens of the sp8192 evaluation split (anchors.md)


def load_stream(n: int, vocab: int, permute: bool, seed: int = 0) -> np.ndarray:
    path = SHARED / "corpus" / "shards" / SHARDS[vocab]
    header = np.fromfile(path, dtype="<i4", count=256)
    base = np.fromfile(path, dtype="<u2", offset=256 * 4, count=int(header[2]))
    rng = np.random.default_rng(seed)
    parts, have, k = [], 0, 0
    while have < n:
        part = base if (k == 0 or not permute) else rng.permutation(vocab).astype(np.uint16)[base]
        parts.append(part[: n - have])
        have += parts[-1].shape[0]
        k += 1
    return np.concatenate(parts)


def cold_compile_seconds() -> float:
    """Compile time of every kernel in a fresh process with an empty Numba cache."""
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "NUMBA_CACHE_DIR": d, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", "from caches import store; print(store.warmup())"],
                             env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return float(out.stdout.strip().splitlines()[-1])


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def default_warm_gb(tokens: int) -> float:
    """GiB to warm for a run of this many tokens: 120 bytes a token (the largest store plus
    the kernel's outputs and the stream), at least 1 GiB."""
    return max(1.0, 120 * tokens / 2**30)


def warm_memory(gb: float) -> str:
    """Touch every page of gb GiB and free it: later allocations reuse host-backed pages."""
    t0 = time.perf_counter()
    buf = np.zeros(int(gb * 2**30), np.uint8)
    buf[::4096] = 1
    del buf
    s = time.perf_counter() - t0
    return f"memory warm-up: {gb:g} GiB touched and freed in {s:.2f} s ({s / (gb * 2**18) * 1e6:.2f} us per 4 KiB page)"


def timed(fn):
    t0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return out, time.perf_counter() - t0, time.thread_time() - c0


def kernel_run(tokens: np.ndarray, spec: str, vocab: int):
    mixer = parse_ngram_spec(vocab, spec)
    mixer.bind(tokens)
    pos = np.arange(1, tokens.shape[0], dtype=np.int64)
    _, wall, cpu = timed(lambda: mixer.advance(pos))
    return mixer, pos.shape[0] / cpu, pos.shape[0] / wall


def engine_run(tokens: np.ndarray, spec: str, vocab: int, batch: int):
    mixer = parse_ngram_spec(vocab, spec)
    mixer.bind(tokens)
    data = EvalData(tokens, np.ones(tokens.shape[0], np.int64), np.array([0], np.int64), sha256="bench")
    ledger = Ledger(tokens.shape[0])
    ctx = EvalContext(None, data, ledger, mixer.name, DistInfo(), mixer, progress=False)
    g = torch.Generator().manual_seed(0)
    rows = torch.log_softmax(torch.randn(batch, vocab, generator=g) * 3, dim=-1)  # (batch, V) float32

    def go():
        total = 0.0
        with torch.inference_mode():
            for a in range(1, tokens.shape[0], batch):
                pos = np.arange(a, min(a + batch, tokens.shape[0]), dtype=np.int64)
                total += float(ctx.score(pos, rows[: pos.shape[0]]).sum())
        return total

    nll, wall, cpu = timed(go)
    n = tokens.shape[0] - 1
    assert ledger.coverage()["unscored"] == 0
    return mixer, n / cpu, n / wall, nll / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="mix:orders=2-11", help="any --ngram spec")
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--vocab", type=int, default=1024, choices=sorted(SHARDS))
    ap.add_argument("--batch", type=int, default=1024, help="positions per EvalContext.score call")
    ap.add_argument("--plain-repeat", action="store_true")
    ap.add_argument("--no-cold-compile", action="store_true")
    ap.add_argument("--warm-gb", type=float, default=None,
                    help="GiB to touch and free before timing (default: 120 bytes per token, at least 1; 0: none)")
    ap.add_argument("--skip-kernel", action="store_true")
    ap.add_argument("--skip-engine", action="store_true",
                    help="kernel figures only (the last line is then the kernel's)")
    args = ap.parse_args()
    warm = args.warm_gb if args.warm_gb is not None else default_warm_gb(args.tokens)
    if warm < 0:
        ap.error("--warm-gb must be >= 0 (0 skips the memory warm-up)")
    torch.set_num_threads(1)

    if not args.no_cold_compile:
        print(f"compile_seconds_cold {cold_compile_seconds():.2f}  (all kernels, empty Numba cache)")
    print(f"compile_seconds_this_process {store.warmup():.2f}  (on-disk cache load if warm)")
    if warm > 0:
        print(warm_memory(warm))
    toks = load_stream(args.tokens, args.vocab, permute=not args.plain_repeat)
    print(f"stream {toks.shape[0]:,} tokens, sp{args.vocab}, "
          f"{'plain repeat' if args.plain_repeat else 'permuted repeats'}; spec {args.spec}")
    if not args.skip_kernel:
        mixer, tps_cpu, tps_wall = kernel_run(toks, args.spec, args.vocab)
        print(f"kernel: {tps_cpu:,.0f} tokens per CPU-second ({tps_wall:,.0f} wall); {load()}")
        st, s = mixer.store.stats(), mixer.stats()
        print(f"store: {st['entries']:,} entries ({st['side_entries']:,} wide), capacity {st['capacity']:,}, "
              f"load {st['load']:.3f}, {st['memory_bytes'] / 2**20:,.1f} MiB")
        print(f"bytes_per_ngram {st['bytes_per_ngram']:.2f}")
        print(f"bytes_per_token {st['bytes_per_token']:.2f}")
        print(f"projected memory at {FULL_SPLIT:,} tokens: {st['bytes_per_token'] * FULL_SPLIT / 1e9:.2f} GB "
              "(linear in tokens: the table is presized from the stream length)")
        print(f"acted at {s['acted_frac']:.2%} of positions, hint right {s['hint_precision']:.1%}")
        del mixer
    if args.skip_engine:
        print(f"ngram_kernel_tokens_per_s {tps_cpu:.1f}")
        return
    mixer, tps_cpu, tps_wall, nll = engine_run(toks, args.spec, args.vocab, args.batch)
    print(f"engine: {tps_cpu:,.0f} tokens per CPU-second ({tps_wall:,.0f} wall), batch {args.batch}, "
          f"mean nll {nll:.4f} on random rows; {load()}")
    print(f"ngram_tokens_per_s {tps_cpu:.1f}")


if __name__ == "__main__":
    main()
