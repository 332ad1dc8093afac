"""LQER (Zhang et al. 2024; PR #1938): a low-rank correction of quantization error.

For the `n` tensors whose quantization hurts most, E = W - deq(Q) is approximated by its
top-`rank` SVD, E ~ A @ B, and A, B are themselves stored as low-bit entries under the
weight's "lowrank" key; evalkit.quant adds A @ B back on load.
"""
from __future__ import annotations

import torch
from torch import Tensor

from evalkit.model.quant import dequantize_entry, dequantize_rows, quantization_error, quantize_rows


def lowrank_factors(err: Tensor, rank: int, bits: int) -> list[dict]:
    """E (R, K) -> [entry A (R, r), entry B (r, K)], quantized per row to `bits`.

    The singular values are split evenly (sqrt on each side) so A and B have similar
    ranges, which keeps their per-row rounding error small."""
    u, s, vh = torch.linalg.svd(err.float(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    a, b = u[:, :r] * root[None], root[:, None] * vh[:r]
    qa, sa = quantize_rows(a, bits)
    # B is quantized against what A will really be, so B absorbs A's rounding error.
    a_hat = dequantize_rows(qa, sa)
    b = torch.linalg.lstsq(a_hat, err.float()).solution if r else b
    qb, sb = quantize_rows(b, bits)
    return [{"kind": "q", "bits": bits, "q": qa, "scale": sa}, {"kind": "q", "bits": bits, "q": qb, "scale": sb}]


def add_lqer(state: dict[str, Tensor], entries: dict[str, dict], rank: int, n: int, bits: int) -> list[str]:
    """Attach corrections to the `n` quantized 2-D tensors with the largest relative error."""
    errs = {k: v for k, v in quantization_error(state, entries).items() if state[k].ndim == 2}
    worst = sorted(errs, key=errs.get, reverse=True)[:n]
    for name in worst:
        e = entries[name]
        err = state[name].float() - dequantize_entry(e)
        entries[name] = {**e, "lowrank": lowrank_factors(err, rank, bits)}
    return worst
