"""CUDA paths (marked `cuda`: skipped with the reason where no GPU is visible; run by
benchmarks/gpu_check.sh). Tolerances are bf16's: autocast rounds activations to 8 bits
of mantissa (relative 2^-9 per rounding), so CUDA scores match the float32 CPU scores
to 0.5% of the mean NLL and 0.15 nats per token, not exactly."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from evalkit.engine.dist import DistInfo
from evalkit.engine.loop import evaluate
from evalkit.model import gpt
from evalkit.strategies.registry import build_strategy
from tests.conftest import random_model, tiny_config
from tests.test_scored_rows import stream
from tests.test_trainer_ddp import records, torchrun

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda", 0)
MEAN_REL_TOL, TOKEN_TOL = 5e-3, 0.15


def sliding(model, data, device: torch.device):
    opts = argparse.Namespace(seq_len=128, stride=32, batch_windows=8, doc_isolated=False, drop_tail=False)
    result, ledger = evaluate(model.to(device), data, build_strategy("sliding", opts), DistInfo(0, 1, device),
                              progress=False)
    return result, ledger.nll.copy()


@pytest.mark.parametrize("features", [{}, dict(bigram_buckets=64, smear_gate=True, gated_attn=True, rope_dims=8,
                                                 xsa_last_n=1)], ids=["baseline", "features"])
def test_cuda_scores_match_cpu_within_bf16_tolerance(features):
    cfg = tiny_config(model_dim=128, num_heads=4, num_kv_heads=2, train_seq_len=128, **features)
    model = random_model(cfg)
    data = stream(3000, cfg.vocab_size)
    cpu, nll_cpu = sliding(model, data, torch.device("cpu"))
    gpu, nll_gpu = sliding(model, data, CUDA)
    diff = np.abs(nll_cpu[1:] - nll_gpu[1:])
    print(f"val_loss cpu {cpu.val_loss:.6f} cuda {gpu.val_loss:.6f}; per-token |diff| max {diff.max():.3e}")
    assert abs(cpu.val_loss - gpu.val_loss) <= MEAN_REL_TOL * cpu.val_loss
    assert diff.max() <= TOKEN_TOL and gpu.coverage == cpu.coverage


@pytest.mark.skipif(gpt.flash_attn_func is None, reason="flash-attn is not installed")
def test_flash_attn_branch_is_taken_under_autocast(monkeypatch):
    calls = []
    real = gpt.flash_attn_func

    def counting(q, k, v, **kw):
        calls.append(q.dtype)
        return real(q, k, v, **kw)

    cfg = tiny_config(model_dim=128, num_heads=2, num_kv_heads=1, train_seq_len=128)  # head_dim 64
    model = random_model(cfg).to(CUDA)
    idx = torch.randint(0, cfg.vocab_size, (2, 128), device=CUDA)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        monkeypatch.setattr(gpt, "flash_attn_func", counting)
        flash = model.log_probs(idx)
        monkeypatch.setattr(gpt, "flash_attn_func", None)
        sdpa = model.log_probs(idx)
    assert len(calls) == cfg.num_layers and set(calls) == {torch.bfloat16}
    assert float((flash - sdpa).abs().max()) < TOKEN_TOL


def test_nccl_one_process(tmp_path):
    torchrun(1, "nccl", str(tmp_path))
    rec = records(tmp_path, 1)[0]
    print(rec)
    assert rec["backend"] == "nccl" and rec["sum"] == [0.0, 1.0, 2.0, 3.0] and rec["steps"] > 1
    assert rec["ddp_grad_diff"] < 1e-5


def test_gptq_with_cuda_hessians_and_cpu_weights():
    from trainer.gptq import gptq_entries, gptq_quantize
    from evalkit.model.quant import quantize_rows
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * 0.05
    x = torch.randn(2048, 256, generator=g)
    q, scale = quantize_rows(w, 6)
    entries = {"m.weight": {"kind": "q", "bits": 6, "q": q, "scale": scale}}
    out = gptq_entries({"m.weight": w}, entries, {"m.weight": (x.T @ x).to(CUDA)})
    codes = out["m.weight"]["q"]
    ref = gptq_quantize(w, x.T @ x, scale, 6)
    same = float((codes == ref).float().mean())
    print(f"codes equal to the CPU run: {same:.4%}")
    assert codes.device.type == "cpu" and same > 0.99


def test_default_batch_windows_fit_in_memory():
    from evalkit.flags import default_batch_windows
    from trainer.config import load_preset
    cfg = load_preset("pr1938", "full").model
    torch.cuda.empty_cache()
    n = default_batch_windows(cfg, 2048, CUDA)
    model = gpt.GPT(cfg).to(CUDA).eval()
    idx = torch.randint(0, cfg.vocab_size, (n, 2048), device=CUDA)
    torch.cuda.reset_peak_memory_stats(CUDA)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        model.log_probs(idx)  # every row scored: flat's worst case
    peak, total = torch.cuda.max_memory_allocated(CUDA), torch.cuda.get_device_properties(CUDA).total_memory
    print(f"{n} windows of 2048: peak {peak / 2**30:.1f} GiB of {total / 2**30:.1f}")
    assert 1 <= n and peak < 0.9 * total


def test_compile_keeps_scores():
    from evalkit.flags import compile_model
    model = random_model(tiny_config()).to(CUDA)
    idx = torch.randint(0, 1024, (4, 64), device=CUDA)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        before = model.log_probs(idx)
    seconds = compile_model(model, 64, 4, CUDA)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        after = model.log_probs(idx)
    print(f"compile + warm-up {seconds:.1f} s")
    assert float((before - after).abs().max()) < TOKEN_TOL
