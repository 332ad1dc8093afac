"""Post-training quantization of a state dict into artifact tensors, and back.

Matrices are quantized per row to b bits (b in 4..8) stored in int8 containers with one
fp16 scale per row: the compressor removes the unused high bits, as in the records.
Small tensors and control parameters (scales, gains, mixes) stay float: they are few
bytes and the model is sensitive to them.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

# Names of control parameters kept in fp32 whatever their size (as the baseline does).
CONTROL_PATTERNS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weights")
SMALL_TENSOR_NUMEL = 65_536  # the baseline's threshold under which floats stay fp16


@dataclass
class QuantSpec:
    """Which bits each tensor gets. `rules` maps fnmatch patterns to bits, first match wins;
    tensors matching none get `default_bits`."""

    default_bits: int = 8  # int8 per row, the baseline's export
    rules: list[tuple[str, int]] = field(default_factory=list)  # e.g. [("blocks.*.mlp.*", 5)]
    clip_percentile: float = 100.0  # per-row clip; the baseline used 99.99984
    keep_float_numel: int = SMALL_TENSOR_NUMEL  # tensors this small stay fp16 (not worth quantizing)

    def bits_for(self, name: str) -> int:
        for pattern, bits in self.rules:
            if fnmatch.fnmatch(name, pattern):
                return bits
        return self.default_bits

    def to_dict(self) -> dict:
        return {"default_bits": self.default_bits, "rules": [list(r) for r in self.rules],
                "clip_percentile": self.clip_percentile, "keep_float_numel": self.keep_float_numel}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSpec":
        return cls(int(d["default_bits"]), [(str(p), int(b)) for p, b in d.get("rules", [])],
                   float(d.get("clip_percentile", 100.0)), int(d.get("keep_float_numel", SMALL_TENSOR_NUMEL)))


def quantize_rows(w: Tensor, bits: int, clip_percentile: float = 100.0) -> tuple[Tensor, Tensor]:
    """(R, ...) float -> (R, ...) int8 values in [-(2^(b-1)-1), 2^(b-1)-1] and (R,) fp16 scales."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    rows = w.detach().float().reshape(w.shape[0], -1)  # (R, K)
    if clip_percentile >= 100.0:
        clip = rows.abs().amax(dim=1)
    else:
        clip = torch.quantile(rows.abs(), clip_percentile / 100.0, dim=1)
    # Round the scale to fp16 first so dequantization uses exactly the stored scale.
    scale = (clip / qmax).clamp_min(1e-8).to(torch.float16)
    s32 = scale.float()[:, None]
    q = torch.clamp(torch.round(rows / s32), -qmax, qmax).to(torch.int8)
    return q.reshape(w.shape), scale


def dequantize_rows(q: Tensor, scale: Tensor) -> Tensor:
    shape = (q.shape[0],) + (1,) * (q.ndim - 1)
    return q.float() * scale.float().view(shape)


def keep_float(name: str, t: Tensor, max_numel: int = SMALL_TENSOR_NUMEL) -> bool:
    return t.ndim < 2 or t.numel() <= max_numel or any(p in name for p in CONTROL_PATTERNS)


def quantize_state_dict(state: dict[str, Tensor], spec: QuantSpec) -> dict[str, dict]:
    """state dict -> {name: entry}; entry is {"kind": "q", "bits", "q", "scale"} or
    {"kind": "f16"|"f32", "data"}. Entries may also carry "lowrank": [entry_A, entry_B]
    (entries themselves, so the factors can be quantized) added back as A @ B on load:
    the LQER corrections written by the trainer."""
    out: dict[str, dict] = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if keep_float(name, t, spec.keep_float_numel):
            control = any(p in name for p in CONTROL_PATTERNS)
            kind = "f32" if control or not t.is_floating_point() else "f16"
            out[name] = {"kind": kind, "data": t.float() if kind == "f32" else t.half()}
        else:
            bits = spec.bits_for(name)
            q, s = quantize_rows(t, bits, spec.clip_percentile)
            out[name] = {"kind": "q", "bits": bits, "q": q, "scale": s}
    return out


def dequantize_entry(entry: dict) -> Tensor:
    if entry["kind"] == "q":
        w = dequantize_rows(entry["q"], entry["scale"])
    else:
        w = entry["data"].float()
    if "lowrank" in entry:
        a, b = (dequantize_entry(e) for e in entry["lowrank"])
        w = w + (a @ b).reshape(w.shape)
    return w


def dequantize_state_dict(entries: dict[str, dict]) -> dict[str, Tensor]:
    return {name: dequantize_entry(e) for name, e in entries.items()}


def quantization_error(state: dict[str, Tensor], entries: dict[str, dict]) -> dict[str, float]:
    """Relative Frobenius error per quantized tensor (for reports and tests)."""
    errs = {}
    for name, e in entries.items():
        if e["kind"] == "q":
            w = state[name].float()
            errs[name] = float((dequantize_entry(e) - w).norm() / w.norm().clamp_min(1e-12))
    return errs


def as_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()
