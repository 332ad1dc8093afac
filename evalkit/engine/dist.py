"""One or many processes: device choice and the few collectives the engine needs.

Under `torchrun` (RANK and WORLD_SIZE set) the process group uses NCCL on CUDA and gloo
on CPU; otherwise everything degrades to a single process and the collectives are
identities. Sums travel as float64 so that N processes add up to the one-process total.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from evalkit.errors import EvalkitError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref not in ("auto", "cpu", "cuda"):
        raise EvalkitError(f"--device {pref}: use auto, cpu or cuda")
    if pref == "cuda" and not torch.cuda.is_available():
        raise EvalkitError("--device cuda: no CUDA device is visible; use --device cpu")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_dist(device_pref: str = "auto") -> DistInfo:
    """Join the torchrun process group if there is one (idempotent)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 1, pick_device(device_pref))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), device)


_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def all_reduce_sum(arr: np.ndarray, info: DistInfo, op: str = "sum") -> np.ndarray:
    """Element-wise sum (or min / max) of a NumPy array over all ranks (same shape
    everywhere), as a new array: the caller's array (a ledger's counts) is left as it was."""
    if not info.distributed:
        return np.array(arr, copy=True)
    t = torch.tensor(np.ascontiguousarray(arr), device=info.device)  # a copy: gloo reduces in place
    dist.all_reduce(t, op=_OPS[op])
    return t.cpu().numpy()


def broadcast_object(obj, info: DistInfo):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
