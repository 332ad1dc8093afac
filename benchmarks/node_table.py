"""Per-rank n-gram table bytes, peak RSS and wall time of sliding + an n-gram cache under
torchrun with gloo on CPU (README "One n-gram table per node").

Usage: python benchmarks/node_table.py [--nproc 2] [--tokens 200000] [--spec tilt:orders=2-11]
                                       [--code DIR]   # time another checkout of evalkit (e.g. an older one)
A small random model (2 layers, d=64, seq 128, stride 64), so that the cache's work shows;
the first --tokens of the shared sp1024 validation shard. Each rank prints its own line
(table bytes, peak RSS, seconds in the timed run, compile seconds); the last line is the
headline: `table_bytes_per_rank <rank0>,<rank1>,... seconds <max over ranks>`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARD = ROOT.parent / "shared" / "corpus" / "shards" / "fineweb_verify200_sp1024_val_000000.bin"


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from evalkit.data.shards import doc_starts, read_shard
    from evalkit.engine.context import EvalData
    from evalkit.engine.dist import init_dist, shutdown
    from evalkit.engine.loop import evaluate
    from evalkit.model.gpt import GPT, GPTConfig
    from evalkit.strategies.registry import build_strategy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    info = init_dist("cpu")
    cfg = GPTConfig(vocab_size=1024, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, train_seq_len=128)
    model = GPT(cfg).eval()
    tokens = read_shard(args.shard)[:args.tokens]
    tokens[0] = 1
    data = EvalData(tokens, np.ones(tokens.size, dtype=np.int64), doc_starts(tokens))
    opts = argparse.Namespace(seq_len=128, stride=64, batch_windows=16, doc_isolated=False, drop_tail=False)
    result, _ = evaluate(model, data, build_strategy("sliding", opts), info, args.spec, progress=False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"rank": info.rank, "table_bytes": result.mixer_memory_bytes, "peak_rss": rss,
           "seconds": result.seconds, "compile_seconds": result.compile_seconds, "val_bpb": result.val_bpb}
    Path(args.out, f"rank{info.rank}.json").write_text(json.dumps(row))  # one file a rank: no interleaved lines
    shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--spec", default="tilt:orders=2-11")
    p.add_argument("--code", default=str(ROOT), help="the evalkit checkout to time (default: this one)")
    p.add_argument("--shard", default=str(SHARD))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": args.code, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(port), str(Path(__file__).resolve()), "--worker", "--tokens",
           str(args.tokens), "--spec", args.spec, "--shard", args.shard]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(cmd + ["--out", out], env=env, capture_output=True, text=True, cwd=args.code)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        rows = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.nproc)]
    for r in rows:
        print(f"rank {r['rank']}: table {r['table_bytes'] / 2**20:.1f} MiB, peak RSS {r['peak_rss'] / 2**20:.0f} MiB, "
              f"run {r['seconds']:.2f} s, compile {r['compile_seconds']:.2f} s, val_bpb {r['val_bpb']:.6f}")
    print(f"table_bytes_per_rank {','.join(str(r['table_bytes']) for r in rows)} "
          f"seconds {max(r['seconds'] for r in rows):.3f}")


if __name__ == "__main__":
    main()
