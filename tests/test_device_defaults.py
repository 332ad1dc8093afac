"""Device defaults: --batch-windows from free memory (16 on CPU), --compile's warm-up,
and report.versions()' accelerator fields."""
from __future__ import annotations

import torch

from evalkit.engine.report import versions
from evalkit.flags import compile_model, default_batch_windows, window_bytes
from tests.conftest import random_model, tiny_config
from trainer.config import load_preset


def test_cpu_default_is_16_and_cuda_estimate_is_sane():
    cfg = load_preset("pr1938", "full").model
    assert default_batch_windows(cfg, 2048, torch.device("cpu")) == 16
    per = window_bytes(cfg, 2048, flash=True)
    # seq 2048, V 8192: the fp32 head rows dominate (~200 MB); without flash SDPA's scores add 64 MB
    assert 150e6 < per < 400e6 and window_bytes(cfg, 2048, flash=False) - per == 8 * 2048 * 2048 * 2
    print(f"{per / 1e6:.0f} MB per window: {int(0.5 * 140e9) // per} windows in half of an H200's memory")


def test_compile_warmup_keeps_scores():
    """The compiled trunk (eager backend here: no C++ toolchain needed) gives the same log-probs."""
    model = random_model(tiny_config())
    idx = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = model.log_probs(idx, torch.tensor([3, 64, 127]))
    seconds = compile_model(model, 64, 2, torch.device("cpu"), backend="eager")
    with torch.inference_mode():
        after = model.log_probs(idx, torch.tensor([3, 64, 127]))
    assert seconds > 0 and torch.allclose(before, after, atol=1e-6)


def test_versions_name_the_accelerator_stack():
    v = versions()
    for key in ("device_name", "cuda", "cudnn", "nccl", "flash_attn"):
        assert key in v
    if not torch.cuda.is_available():
        assert v["device_name"] is None and v["cuda"] is None and v["nccl"] is None
    else:
        assert v["device_name"] and v["cuda"]
