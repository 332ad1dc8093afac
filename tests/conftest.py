"""Shared fixtures: the ../shared data beside the checkout and a tiny trained-free model."""
from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from evalkit.model.artifact import save_artifact
from evalkit.model.gpt import GPT, GPTConfig
from evalkit.model.quant import QuantSpec, quantize_state_dict

SHARED = Path(__file__).resolve().parents[2] / "shared"
SP1024 = SHARED / "tokenizers" / "fineweb_1024_bpe.model"
SP8192 = SHARED / "tokenizers" / "fineweb_8192_bpe.model"
VAL1024 = SHARED / "corpus" / "shards" / "fineweb_verify200_sp1024_val_000000.bin"


def require_shared() -> None:
    if not VAL1024.exists():
        pytest.skip(f"{SHARED} not found beside the checkout (CI provides it)")


def tiny_config(**kw) -> GPTConfig:
    base = dict(vocab_size=1024, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, train_seq_len=64)
    base.update(kw)
    return GPTConfig(**base)


def random_model(cfg: GPTConfig, seed: int = 0) -> GPT:
    """A model with non-trivial weights (zero-init layers would make every window alike)."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.08)
    return model.eval()


def free_port() -> int:
    """A free TCP port on the loopback for one test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_gloo(rank: int, world: int, port: int, timeout_s: float | None = None) -> None:
    """In a spawned test worker: one torch thread, then this rank's gloo process group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group("gloo", rank=rank, world_size=world, **timeout)


@pytest.fixture
def tiny_artifact(tmp_path) -> Path:
    cfg = tiny_config()
    model = random_model(cfg)
    path = tmp_path / "tiny.ptz"
    save_artifact(path, cfg, quantize_state_dict(model.state_dict(), QuantSpec(8)))
    return path


# Tests run many tiny models; one thread avoids oversubscription on CI's 2 cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts on one torch thread: an in-process CLI call applies the thread
    policy (2 threads on an idle 2-core box), and a later parity test comparing a 1-thread
    worker with this process must not depend on which tests ran before it or on the load."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """`cuda`-marked tests are skipped, with the reason, where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (benchmarks/gpu_check.sh runs these on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
