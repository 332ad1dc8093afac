"""Tokens/s of sliding eval and of per-document LoRA TTT on the same model and context (CPU).

    .venv/bin/python benchmarks/ttt_throughput.py --docs 6 --context 256 --threads 1

Stream: the first --docs documents of the sp1024 validation shard in ../shared/corpus.
Model: --artifact, or a random GPT of --layers x --dim (weights do not change the cost).
Sliding: windows of --context, stride --stride (the records' sliding eval: 64).
TTT: chunks of --chunk targets, each with up to --context tokens of its document, one
AdamW step per chunk on the q,v,lm_head adapters (rank 8). Last line:
`ttt_over_sliding <float>` (time per token of TTT over sliding). With --profile the top
operators of the TTT run are printed (what dominates the cost).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from evalkit.engine.dist import DistInfo  # noqa: E402
from evalkit.engine.loop import evaluate  # noqa: E402
from evalkit.engine.inputs import load_data, load_model  # noqa: E402
from evalkit.model.gpt import GPT, GPTConfig  # noqa: E402
from evalkit.strategies.registry import add_common_args, build_strategy  # noqa: E402


def build_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", default=None, help="evalkit .ptz (default: a random model)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--docs", type=int, default=6)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--chunk", type=int, default=48)
    p.add_argument("--ttt-batch-docs", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="print the top operators of the TTT run")
    return p.parse_args(argv)


def strategy_opts(a: argparse.Namespace) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_common_args(p)
    opts = p.parse_args(["--seq-len", str(a.context), "--stride", str(a.stride), "--batch-windows", "16",
                         "--ttt-context", str(a.context), "--ttt-chunk", str(a.chunk),
                         "--ttt-batch", str(a.ttt_batch_docs)])
    opts.seed = 0
    return opts


def main(argv: list[str] | None = None) -> None:
    a = build_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.artifact:
        model = load_model(a.artifact, torch.device("cpu")).model
    else:
        cfg = GPTConfig(num_layers=a.layers, model_dim=a.dim, num_heads=4, num_kv_heads=2, train_seq_len=a.context)
        model = GPT(cfg).eval()
    data = load_data(str(SHARED / "corpus/shards/fineweb_verify200_sp1024_val_*.bin"),
                     str(SHARED / "tokenizers/fineweb_1024_bpe.model"), model.cfg.vocab_size, a.docs)
    opts = strategy_opts(a)
    rates = {}
    for name in ("sliding", "ttt"):
        if name == "ttt" and a.profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                result, _ = evaluate(model, data, build_strategy(name, opts), DistInfo(), progress=False)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
        else:
            result, _ = evaluate(model, data, build_strategy(name, opts), DistInfo(), progress=False)
        rates[name] = result.tokens_per_s
        print(f"{name:8s} tokens/s {result.tokens_per_s:10.1f}  bpb {result.val_bpb:.4f}  "
              f"({result.tokens} tokens, {result.seconds:.1f} s)")
    print(f"ttt_over_sliding {rates['sliding'] / rates['ttt']:.3f}")


if __name__ == "__main__":
    main()
