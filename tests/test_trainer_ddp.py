"""DDP on CPU (gloo, torchrun): ranks stop together on an agreed clock, and Muon's
sharded Newton-Schulz equals the unsharded optimizer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, *args: str, timeout: int = 150) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "tests" / "ddp_worker.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{nproc} ranks did not finish in {timeout} s: a rank is blocked (hang)")
    assert proc.returncode == 0, proc.stderr[-3000:]


def records(out: Path, nproc: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def test_wall_clock_stop_is_agreed(tmp_path, nproc=3, slow=1):
    """One rank of three starts 1 s late and runs slower; with per-rank clocks the others would stop
    first and leave it blocked in DDP's all-reduce. All must stop at the same step and end
    with identical weights (same LR schedule on every rank)."""
    torchrun(nproc, "train", str(tmp_path), str(slow))
    recs = records(tmp_path, nproc)
    print([(r["rank"], r["steps"], r["train_seconds"]) for r in recs])
    assert len({r["steps"] for r in recs}) == 1 and recs[0]["steps"] > 1
    assert len({r["digest"] for r in recs}) == 1


def test_sharded_muon_equals_unsharded(tmp_path, nproc=3):
    torchrun(nproc, "muon", str(tmp_path))  # 3 ranks: the last round of 3 shapes is partial
    recs = records(tmp_path, nproc)
    print(recs)
    assert all(r["max_diff"] == 0.0 and r["moved"] > 0 for r in recs)
    # each rank keeps momentum only for the matrices it orthogonalizes
    assert sum(r["own_buffers"] for r in recs) == 6 and all(r["own_buffers"] < 6 for r in recs)


def test_no_per_step_host_sync(monkeypatch):
    """The loss stays on the device: the trainer reads a tensor's value on the host (float,
    item) a fixed number of times per run, not once per step. (AdamW reads its step count,
    a host tensor, every step: no device sync, so not counted.)"""
    import sys

    import numpy as np
    import torch

    from evalkit.engine.dist import DistInfo
    from tests.ddp_worker import TINY
    from trainer.config import load_preset
    from trainer.train import train

    reads = []
    for name in ("__float__", "item"):
        real = getattr(torch.Tensor, name)

        def counted(self, _real=real):
            caller = sys._getframe(1).f_code.co_filename
            if "/trainer/" in caller or "/evalkit/" in caller:
                reads.append(caller)
            return _real(self)

        monkeypatch.setattr(torch.Tensor, name, counted)
    tokens = np.random.default_rng(0).integers(1, 1024, 5000).astype(np.uint16)
    preset = load_preset("demo", None, [*TINY, "iterations=12", "max_seconds=600"])
    _, _, stats = train(preset, tokens, DistInfo(), progress_bar=False)
    print(f"{len(reads)} host reads in {stats['steps']} steps")
    assert stats["steps"] == 12 and len(reads) <= 1, reads
