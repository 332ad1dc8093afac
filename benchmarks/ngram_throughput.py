"""Throughput and memory of the score-first n-gram mixer (not a test).

    .venv/bin/python benchmarks/ngram_throughput.py --tokens 10000000

Stream: the sp1024 validation shard of ../shared/corpus (FineWeb text, 628k tokens), repeated
to N tokens. By default every repetition relabels the vocabulary with a fresh random
permutation, so repeated passes add *new* n-grams like fresh text would (an honest memory
figure; a plain repeat, --plain-repeat, would stop the store growing after the first pass).

The model forward is EXCLUDED: the mixer gets one fixed unigram log-distribution row for every
position (a broadcast view, no per-token copy) and, unless --no-entropy, its precomputed
entropy (the engine computes the entropy on the GPU next to the log-softmax). Timed: score
then update on consecutive segments, one core, compile excluded (kernels warmed up first).

What bounds the speed (measured on 2 shared EPYC cores): update, ~0.5-0.9 us per token,
about 10 find-or-insert probes plus 20 packed-count read-modify-writes per token, growing with
the table's load (longer probe runs); score ~0.2-0.4 us (keys ~0.06-0.1 us of it: hi
splitmix64 steps per position); the first touch of the presized table (page faults, kernel
zeroing) ~0.1-0.4 us per token at the start; Python per segment ~3 us (score + update).
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

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from caches import store  # noqa: E402
from caches.mixer import parse_ngram_spec  # noqa: E402
from caches.predictors import row_entropy  # noqa: E402


def load_stream(n: int, permute: bool, seed: int = 0) -> np.ndarray:
    path = SHARED / "corpus" / "shards" / "fineweb_verify200_sp1024_val_000000.bin"
    header = np.fromfile(path, dtype="<i4", count=256)
    base = np.fromfile(path, dtype="<u2", offset=256 * 4, count=int(header[2]))
    rng = np.random.default_rng(seed)
    parts, have, k = [], 0, 0
    while have < n:
        part = base if (k == 0 or not permute) else rng.permutation(1024).astype(np.uint16)[base]
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


def run(tokens: np.ndarray, spec: str, seg: int, with_entropy: bool, limit: int | None = None):
    V = 1024
    uni = np.bincount(tokens[:1_000_000], minlength=V) + 1.0
    row = np.log(uni / uni.sum())
    lp = np.broadcast_to(row, (seg, V))
    ent = np.full(seg, float(row_entropy(row[None])[0]))
    n = tokens.shape[0] if limit is None else min(limit, tokens.shape[0])
    mixer = parse_ngram_spec(V, spec)
    mixer.bind(tokens[:n])  # the store is sized from the bound stream: bind what is scored
    checksum = 0.0
    t0, c0 = time.perf_counter(), time.thread_time()
    for a in range(0, n - seg + 1, seg):
        pos = np.arange(a, a + seg, dtype=np.int64)
        s = mixer.score(pos, lp, ent if with_entropy else None)
        mixer.update(pos)
        checksum += float(s.sum())
    dt, dc = time.perf_counter() - t0, time.thread_time() - c0
    done = (n // seg) * seg
    # per CPU-second of this thread (the kernels run in it): one core, immune to descheduling
    # and to CPU used by other threads of the process (e.g. idle BLAS workers)
    run.cpu_tps = done / dc
    return done / dt, mixer, -checksum / done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--segment", type=int, default=64)
    ap.add_argument("--orders", default="2-11")
    ap.add_argument("--plain-repeat", action="store_true")
    ap.add_argument("--no-cold-compile", action="store_true")
    args = ap.parse_args()

    if not args.no_cold_compile:
        print(f"compile_seconds_cold {cold_compile_seconds():.2f}  (all kernels, empty Numba cache)")
    print(f"compile_seconds_this_process {store.warmup():.2f}  (on-disk cache load if warm)")
    toks = load_stream(args.tokens, permute=not args.plain_repeat)
    print(f"stream {toks.shape[0]} tokens, {'plain repeat' if args.plain_repeat else 'permuted repeats'},"
          f" segment {args.segment}, orders {args.orders}")

    m_n = min(toks.shape[0], 500_000)
    tps, _, nll = run(toks, f"mix:orders={args.orders}", args.segment, False, limit=m_n)
    print(f"mix  entropy computed in score (V=1024 per row): {tps:,.0f} tokens/s wall,"
          f" {run.cpu_tps:,.0f} per CPU-second, over {m_n} tokens")
    tps_t, _, nll_t = run(toks, f"tilt:orders={args.orders}", args.segment, True, limit=m_n)
    print(f"tilt entropy given: {tps_t:,.0f} tokens/s wall, {run.cpu_tps:,.0f} per CPU-second,"
          f" over {m_n} tokens")

    tps, mixer, nll = run(toks, f"mix:orders={args.orders}", args.segment, True)
    st = mixer.store.stats()
    cpu_tps = run.cpu_tps
    print(f"mix  entropy given: {tps:,.0f} tokens/s wall, {cpu_tps:,.0f} tokens per CPU-second, over"
          f" {toks.shape[0]} tokens (mean nll {nll:.4f} nats); load average {os.getloadavg()[0]:.1f}"
          f" on {os.cpu_count()} cores")
    print(f"store: {st['entries']:,} entries ({st['side_entries']:,} wide), capacity {st['capacity']:,},"
          f" load {st['load']:.3f}, {st['memory_bytes'] / 2**20:,.1f} MiB")
    print(f"bytes_per_ngram {st['bytes_per_ngram']:.2f}")
    print(f"bytes_per_token {st['bytes_per_token']:.2f}")
    # one core: CPU time of this single-threaded process (on a shared machine the wall figure
    # above also counts the time other processes held the core)
    print(f"ngram_tokens_per_s {cpu_tps:.1f}")


if __name__ == "__main__":
    main()
