"""Tokens/s of `flat` and `sliding` on CPU, at the demo's shape or a preset's full size.

Usage: python benchmarks/sliding_throughput.py [--tokens 20000] [--threads 2]
       python benchmarks/sliding_throughput.py --preset pr1938 --scale full --tokens 3000 --only sliding
Random weights (speed does not depend on them); default shape = the demo preset's: 4 layers,
d=192, 4/2 heads, vocab 1024, seq 256. `--preset` takes a trainer preset's model (and its
train_seq_len unless --seq-len). Random tokens with a BOS every ~800. Prints one line per
strategy and, last, `sliding_tokens_per_s <float>`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evalkit.engine.dist import DistInfo  # noqa: E402
from evalkit.engine.context import EvalData  # noqa: E402
from evalkit.engine.loop import evaluate  # noqa: E402
from evalkit.model.gpt import GPT, GPTConfig  # noqa: E402
from evalkit.strategies.registry import build_strategy  # noqa: E402

DEMO = GPTConfig(vocab_size=1024, num_layers=4, model_dim=192, num_heads=4, num_kv_heads=2, train_seq_len=256)


def model_config(preset: str | None, scale: str | None) -> GPTConfig:
    if preset is None:
        return DEMO
    from trainer.config import load_preset
    return load_preset(preset, scale).model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--batch-windows", type=int, default=16)
    p.add_argument("--preset", default=None, help="trainer preset whose model shape to time (default: demo shape)")
    p.add_argument("--scale", default=None, help="the preset's scale (tiny/full)")
    p.add_argument("--seq-len", type=int, default=None, help="default: the model's train_seq_len")
    p.add_argument("--only", choices=("flat", "sliding"), default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model_config(args.preset, args.scale)
    seq = args.seq_len or cfg.train_seq_len
    model = GPT(cfg).eval()
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, cfg.vocab_size, args.tokens).astype(np.uint16)
    tokens[::800] = 1
    data = EvalData(tokens, np.ones(args.tokens, dtype=np.int64), np.flatnonzero(tokens == 1))
    rate = {}
    for name in [args.only] if args.only else ("flat", "sliding"):
        opts = argparse.Namespace(seq_len=seq, stride=args.stride, batch_windows=args.batch_windows,
                                  doc_isolated=False, drop_tail=False)
        cpu0 = time.process_time()
        result, _ = evaluate(model, data, build_strategy(name, opts), DistInfo(), progress=False)
        cpu = time.process_time() - cpu0  # on a loaded machine, CPU seconds compare better than wall
        rate[name] = result.tokens_per_s
        print(f"{name:8s} V {cfg.vocab_size} L {cfg.num_layers} d {cfg.model_dim} seq {seq} "
              f"stride {args.stride if name == 'sliding' else seq}: {result.tokens:,} tokens in "
              f"{result.seconds:.2f} s = {result.tokens_per_s:,.0f} tokens/s; {cpu:.2f} CPU s = "
              f"{result.tokens / cpu:,.0f} tokens per CPU s")
    print(f"sliding_tokens_per_s {rate.get('sliding', float('nan')):.1f}")


if __name__ == "__main__":
    main()
