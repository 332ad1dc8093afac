"""TTT + n-gram wall time with the host thread scoring each chunk (overlapped) vs inline (serial).

    .venv/bin/python benchmarks/ttt_overlap.py --reps 5 --threads 1

Demo-shaped random GPT (4 layers, d=192, V 1024, seq 256), --docs documents of the sp1024
validation shard in ../shared/corpus each cut to --doc-tokens (full batches: 768 targets
per chunk step), per-document LoRA TTT (chunk 48, batch 16, one AdamW step per chunk).
For each --ngram spec, serial (overlap DEPTH 0) and overlapped (DEPTH 2) runs alternate
(A B A B ...), so machine load hits both alike. Printed, medians: wall seconds; the host
scoring seconds (what the overlap can hide at most: the mixer's Numba work, the entropy,
the ledger's numbers); the main thread's seconds inside the host scorer (serial: fixing
and scoring; overlapped: fixing, the rows' copy, any wait for the worker), which is what
the overlap takes off the critical path. Every pair's NLLs must be bitwise equal.
Last line: `ttt_overlap_saving <fraction of the first spec's serial wall time>`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from benchmarks.sliding_throughput import DEMO  # noqa: E402
from benchmarks.ttt_throughput import strategy_opts  # noqa: E402
from evalkit.engine import overlap  # noqa: E402
from evalkit.engine.context import EvalContext, EvalData  # noqa: E402
from evalkit.engine.dist import DistInfo  # noqa: E402
from evalkit.engine.inputs import load_data  # noqa: E402
from evalkit.engine.loop import evaluate  # noqa: E402
from evalkit.model.gpt import GPT  # noqa: E402
from evalkit.strategies.registry import build_strategy  # noqa: E402

# seconds: the scoring half (any thread), the fixing half, the main thread inside HostScorer
HOST = {"settle": 0.0, "fix": 0.0, "main": 0.0}


def timed(cls, name: str, key: str) -> None:
    real = getattr(cls, name)

    def wrapper(*args, **kw):
        t0 = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            HOST[key] += time.perf_counter() - t0

    setattr(cls, name, wrapper)


def cut_documents(full: EvalData, n: int) -> EvalData:
    """Documents 1.. of `full`, each cut to its first `n` tokens (BOS included)."""
    ends = np.append(full.doc_starts[1:], full.n_tokens)
    keep = np.concatenate([np.arange(s, min(e, s + n)) for s, e in zip(full.doc_starts[1:], ends[1:])])
    tokens, target_bytes = full.tokens[keep], full.target_bytes[keep].copy()
    target_bytes[0] = 0
    return EvalData(tokens, target_bytes, np.flatnonzero(tokens == full.tokens[full.doc_starts[0]]))


def one_run(model, data, opts, spec: str, depth: int) -> tuple[float, float, float, np.ndarray]:
    overlap.DEPTH = depth
    HOST.update(settle=0.0, fix=0.0, main=0.0)
    result, ledger = evaluate(model, data, build_strategy("ttt", opts), DistInfo(), spec, progress=False)
    print(f"  depth {depth}: {result.seconds:.2f} s; settle {HOST['settle']:.3f} s, fix {HOST['fix']:.3f} s, "
          f"main thread in the host scorer {HOST['main']:.3f} s", flush=True)
    return result.seconds, HOST["settle"], HOST["main"], ledger.nll.copy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=32, help="documents (after the first, a 21k-token outlier)")
    p.add_argument("--doc-tokens", type=int, default=768, help="each document cut to this many tokens, so that "
                   "batches are full (16 documents x 48 targets per chunk step)")
    p.add_argument("--reps", type=int, default=5, help="A/B pairs per spec")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main thread")
    p.add_argument("--ngram", nargs="+", default=["tilt:preset=records", "mix:orders=2-7"])
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = GPT(DEMO).eval()
    full = load_data(str(SHARED / "corpus/shards/fineweb_verify200_sp1024_val_*.bin"),
                     str(SHARED / "tokenizers/fineweb_1024_bpe.model"), DEMO.vocab_size, a.docs + 1)
    data = cut_documents(full, a.doc_tokens)
    opts = strategy_opts(argparse.Namespace(context=256, stride=64, chunk=48, ttt_batch_docs=16))
    timed(EvalContext, "_settle", "settle")
    timed(EvalContext, "fix_scores", "fix")
    for name in ("submit", "__exit__"):  # serial: fix + scoring; overlapped: fix + copy + waiting for the worker
        timed(overlap.HostScorer, name, "main")
    print(f"{data.n_tokens:,} tokens, {len(data.doc_starts)} documents; load before: {os.getloadavg()}")
    saving = {}
    for spec in a.ngram:
        one_run(model, data, opts, spec, 2)  # compile/warm caches outside the comparison
        serial, over, host, main_s, main_o = [], [], [], [], []
        for _ in range(a.reps):
            s, h, m_s, nll_s = one_run(model, data, opts, spec, 0)
            o, _, m_o, nll_o = one_run(model, data, opts, spec, 2)
            assert np.array_equal(nll_s, nll_o), f"{spec}: overlapped scores differ from serial"
            serial.append(s), over.append(o), host.append(h), main_s.append(m_s), main_o.append(m_o)
        ms, mo, mh = statistics.median(serial), statistics.median(over), statistics.median(host)
        saving[spec] = (ms - mo) / ms
        print(f"ttt+{spec}: serial {ms:.2f} s, overlapped {mo:.2f} s (median of {a.reps}; "
              f"serial {['%.2f' % x for x in serial]}, overlapped {['%.2f' % x for x in over]}); "
              f"host scoring {mh:.3f} s = {mh / ms:.1%} of serial; saved {ms - mo:+.3f} s = {saving[spec]:+.1%}; "
              f"main thread inside the host scorer: serial {statistics.median(main_s):.3f} s, "
              f"overlapped {statistics.median(main_o):.3f} s")
    print(f"load after: {os.getloadavg()}")
    print(f"ttt_overlap_saving {next(iter(saving.values())):.4f}")


if __name__ == "__main__":
    main()
