"""Quantization-aware training with a straight-through estimator (PR #372, #810).

From `qat_start_frac` of training on, every exported matrix trains through its
round-trip quantize -> dequantize at the bits the export will use: the forward pass sees
the rounded weight, the backward pass treats rounding as identity. The rounding is
evalkit.quant's, so training sees exactly what the artifact will hold.
"""
from __future__ import annotations

import fnmatch
from functools import partial

from torch import Tensor, nn

from evalkit.model.layers import Linear
from evalkit.model.quant import dequantize_rows, keep_float, quantize_rows
from trainer.config import ExportConfig
from trainer.export import quant_spec


def fake_quant(w: Tensor, bits: int, clip_percentile: float = 100.0) -> Tensor:
    """w + (round_trip(w) - w).detach(): rounded forward, identity gradient."""
    q, scale = quantize_rows(w, bits, clip_percentile)
    return w + (dequantize_rows(q, scale).to(w.dtype) - w).detach()


class FakeQuant:
    """Attach STE rounding to the model's exported Linear weights; `enabled` toggles it."""

    def __init__(self, model: nn.Module, export: ExportConfig):
        spec = quant_spec(export)
        self.modules: list[tuple[Linear, object]] = []
        for name, m in model.named_modules():
            wname = f"{name}.weight"
            if not isinstance(m, Linear) or keep_float(wname, m.weight):
                continue
            if any(fnmatch.fnmatch(wname, p) for p in export.keep_fp16):
                continue
            self.modules.append((m, partial(fake_quant, bits=spec.bits_for(wname),
                                            clip_percentile=spec.clip_percentile)))
        self._enabled = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        if on != self._enabled:
            for m, fn in self.modules:
                m.fake_quant = fn if on else None
            self._enabled = on

    def remove(self) -> None:
        self.enabled = False
