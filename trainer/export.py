"""Trained weights -> quantized entries -> a `.ptz` through evalkit's artifact writer.

Round-to-nearest per-row quantization is evalkit.quant's; GPTQ (trainer.gptq) and LQER
(trainer.lqer) replace or correct its entries when the preset asks for them.
"""
from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import asdict

from torch import Tensor

from evalkit.model.artifact import save_artifact
from evalkit.model.gpt import GPTConfig
from evalkit.model.quant import QuantSpec, quantize_state_dict
from trainer.config import ExportConfig

log = logging.getLogger(__name__)


def quant_spec(export: ExportConfig) -> QuantSpec:
    return QuantSpec(export.default_bits, [(str(p), int(b)) for p, b in export.rules], export.clip_percentile)


def quantize(state: dict[str, Tensor], export: ExportConfig,
             hessians: Callable[[], dict[str, Tensor]] | None = None) -> dict[str, dict]:
    """Entries for the artifact. `hessians` is called only when GPTQ is on: it runs the
    model over training batches and returns {weight name: X^T X of that layer's input}."""
    entries = quantize_state_dict(state, quant_spec(export))
    for name, t in state.items():  # pr372/pr451: tensors the recipe keeps in fp16
        if any(fnmatch.fnmatch(name, p) for p in export.keep_fp16):
            entries[name] = {"kind": "f16", "data": t.detach().cpu().half()}
    if export.gptq:
        from trainer.gptq import gptq_entries
        entries.update(gptq_entries(state, entries, hessians() if hessians else {}))
    if export.lqer_rank > 0:
        from trainer.lqer import add_lqer
        add_lqer(state, entries, export.lqer_rank, export.lqer_tensors, export.lqer_bits)
    return entries


def export_artifact(path: str, cfg: GPTConfig, state: dict[str, Tensor], export: ExportConfig, meta: dict,
                    hessians: Callable[[], dict[str, Tensor]] | None = None) -> int:
    state = {k: v.detach().float().cpu() for k, v in state.items()}
    entries = quantize(state, export, hessians)
    nbytes = save_artifact(path, cfg, entries, compressor=export.compressor,
                           quant={**quant_spec(export).to_dict(), **asdict(export)}, meta=meta)
    log.info("wrote %s: %s bytes (%s)", path, f"{nbytes:,}", export.compressor)
    return nbytes

