"""Worker for tests/test_trainer_ddp.py, run under torchrun with gloo on CPU.

`train OUT SLOW_RANK`: trains the demo recipe at a tiny size with a wall-clock cap; the
slow rank starts its clock 1 s late and takes 20 ms longer per step. Writes
OUT/rank<r>.json with the step count and a digest of the trained weights.
`nccl OUT`: on CUDA with NCCL (one process is enough): an all-reduce through the engine's
helper and two seconds of DDP training; writes the backend and the step count.
`muon OUT`: three sharded Muon steps against the unsharded optimizer on the same
parameters and gradients; writes OUT/rank<r>.json with their largest difference.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from evalkit.engine.dist import init_dist, shutdown

TINY = ["model.num_layers=2", "model.model_dim=64", "train_seq_len=32", "batch_tokens=192", "log_every=100000",
        "iterations=100000", "max_seconds=2.5", "warmdown_frac=0.5", "on_max_seconds=stop"]


def digest(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(state[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_mode(out: Path, slow_rank: int, device: str = "cpu") -> dict:
    import trainer.train as tt
    from trainer.config import load_preset
    info = init_dist(device)
    preset = load_preset("demo", None, TINY)
    tokens = np.random.default_rng(0).integers(1, 1024, 30000).astype(np.uint16)
    if info.rank == slow_rank:
        build, nxt = tt.build_optimizers, tt.Batches.next

        def late_build(*a, **k):  # after DDP's start-up sync, before the clock starts
            time.sleep(1.0)
            return build(*a, **k)

        def slow_next(self):
            time.sleep(0.02)
            return nxt(self)

        tt.build_optimizers, tt.Batches.next = late_build, slow_next
    _, state, stats = tt.train(preset, tokens, info, progress_bar=False)
    return {"rank": info.rank, "steps": stats["steps"], "digest": digest(state),
            "train_seconds": stats["train_seconds"]}


def muon_mode(out: Path) -> dict:
    from trainer.optim import Muon
    info = init_dist("cpu")
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 32)] * 3 + [(32, 16)] * 2 + [(8, 8)]
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    start = [p.detach().clone() for p in params]
    sharded = Muon(params, lr=0.05, momentum=0.9, weight_decay=0.1)
    plain = Muon(ref, lr=0.05, momentum=0.9, weight_decay=0.1, shard=False)
    for _ in range(3):
        for p, r in zip(params, ref):
            p.grad = torch.randn(p.shape, generator=g)  # same stream on every rank, as after DDP
            r.grad = p.grad.clone()
        sharded.step()
        plain.step()
    diff = max(float((p - r).abs().max()) for p, r in zip(params, ref))
    moved = min(float((p - p0).abs().max()) for p, p0 in zip(params, start))
    own = sum("momentum_buffer" in sharded.state[p] for p in params)
    return {"rank": info.rank, "max_diff": diff, "moved": moved, "own_buffers": own}


def nccl_mode(out: Path) -> dict:
    """With one process the engine's helpers skip collectives, so call NCCL directly: an
    all-reduce, and DDP's gradient all-reduce on a small layer (equal to the plain grads)."""
    info = init_dist("cuda")
    t = torch.arange(4, dtype=torch.float64, device=info.device)
    torch.distributed.all_reduce(t)
    layer = torch.nn.Linear(8, 4).to(info.device)
    ddp = torch.nn.parallel.DistributedDataParallel(layer)
    x = torch.randn(16, 8, device=info.device)
    ddp(x).square().sum().backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    layer(x).square().sum().backward()
    record = train_mode(out, slow_rank=-1, device="cuda")
    return {**record, "backend": torch.distributed.get_backend(), "sum": t.tolist(), "device": str(info.device),
            "ddp_grad_diff": float((grad - layer.weight.grad).abs().max())}


def main() -> None:
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "train":
        record = train_mode(out, int(sys.argv[3]))
    else:
        record = nccl_mode(out) if mode == "nccl" else muon_mode(out)
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record))
    shutdown()


if __name__ == "__main__":
    main()
