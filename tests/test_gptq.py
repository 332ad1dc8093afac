"""Quantizers on the same tensor: naive rounding > GPTQ > GPTQ + LQER in output error,
and QAT's STE rounding equals the export's."""
from __future__ import annotations

import pytest
import torch

from evalkit.model.quant import dequantize_entry, dequantize_rows, quantize_rows
from trainer.gptq import gptq_quantize
from trainer.lqer import add_lqer, lowrank_factors
from trainer.qat import fake_quant


def correlated_inputs(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Activations with a decaying spectrum, as real layer inputs have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * torch.logspace(0, -1.5, k)[None]
    return torch.randn(n, k, generator=g) @ mix


def output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - w_hat) @ x.T).norm() / (w @ x.T).norm())


def test_naive_gt_gptq_gt_lqer():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 128, generator=g) * 0.05
    x = correlated_inputs(2048, 128)
    q, scale = quantize_rows(w, 4)
    naive = dequantize_rows(q, scale)
    gq = gptq_quantize(w, x.T @ x, scale, 4)
    gptq = dequantize_rows(gq, scale)
    corr = lowrank_factors(w - gptq, rank=4, bits=8)
    lqer = gptq + dequantize_entry(corr[0]) @ dequantize_entry(corr[1])
    e_naive, e_gptq, e_lqer = (output_error(w, h, x) for h in (naive, gptq, lqer))
    print(f"output error naive {e_naive:.4f}  gptq {e_gptq:.4f}  gptq+lqer {e_lqer:.4f}")
    assert e_lqer < e_gptq < e_naive
    assert gq.abs().max() <= 7 and gq.dtype == torch.int8


def test_lqer_attaches_to_worst_tensors_and_reduces_weight_error():
    g = torch.Generator().manual_seed(1)
    state = {f"blocks.{i}.mlp.fc.weight": torch.randn(64, 96, generator=g) * (i + 1) for i in range(4)}
    state["blocks.0.mlp.fc.weight"][:, :3] *= 40  # outliers: this row-scaled tensor rounds worst
    entries = {k: dict(zip(("q", "scale"), quantize_rows(v, 5)), kind="q", bits=5) for k, v in state.items()}
    before = {k: float((dequantize_entry(e) - state[k]).norm()) for k, e in entries.items()}
    worst = add_lqer(state, entries, rank=4, n=1, bits=4)
    assert worst == ["blocks.0.mlp.fc.weight"]
    after = float((dequantize_entry(entries[worst[0]]) - state[worst[0]]).norm())
    assert after < before[worst[0]]
    assert "lowrank" not in entries["blocks.1.mlp.fc.weight"]


def test_fake_quant_matches_export_and_passes_gradient():
    w = torch.randn(32, 64, requires_grad=True)
    out = fake_quant(w, 6)
    q, s = quantize_rows(w, 6)
    assert torch.equal(out.detach(), dequantize_rows(q, s))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through
    err = [float((fake_quant(w, b) - w).detach().norm()) for b in (4, 5, 6, 8)]
    assert err == sorted(err, reverse=True)  # more bits, smaller round-trip error


def test_gptq_tensors_follow_the_weights_device():
    """GPU training hands GPTQ Hessians on the device and weights on the host. Without a GPU:
    dtype mixes give the all-float32 codes, and a weight on the meta device with a CPU
    Hessian runs the whole path on meta (any tensor the code made on the CPU would meet a
    meta tensor and raise); `device=` moves the work to the Hessian's side."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(24, 160, generator=g) * 0.05
    x = correlated_inputs(600, 160)
    h = x.T @ x
    h[:, 5] = h[5, :] = 0  # a dead input
    _q, scale = quantize_rows(w, 5)
    ref = gptq_quantize(w, h, scale, 5)
    assert ref.device.type == "cpu" and int(ref[:, 5].abs().max()) == 0
    assert torch.equal(gptq_quantize(w.double(), h.double(), scale.half().float(), 5), ref)
    on_meta = gptq_quantize(w.to("meta"), h, scale, 5)
    assert on_meta.device.type == "meta" and on_meta.shape == w.shape and on_meta.dtype == torch.int8
    # computed where the Hessian is (meta), the codes head back to the weight's device (CPU):
    # meta has no data to copy, which is the proof that they do
    with pytest.raises(NotImplementedError, match="meta"):
        gptq_quantize(w, h.to("meta"), scale, 5, device="meta")
