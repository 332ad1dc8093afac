"""Weight initializations of the records (TrainConfig.init); "default" keeps evalkit's.

orthogonal (PR #198): hidden matrices orthogonal, output projections (zero-initialized in
the baseline) orthogonal too but scaled by 1/sqrt(2 * num_layers), muP-style, so the
residual stream's variance does not grow with depth.
overtone (PR #810): the token embedding gets a power-law singular spectrum
(s_k ~ k^-1/2), like trained embeddings, instead of an isotropic Gaussian.
"""
from __future__ import annotations

import math

import torch

from evalkit.errors import EvalkitError
from evalkit.model.gpt import GPT
from evalkit.model.layers import Linear


@torch.no_grad()
def apply_init(model: GPT, kind: str) -> None:
    if kind == "default":
        return
    if kind not in ("orthogonal", "overtone"):
        raise EvalkitError(f"init={kind}: use default, orthogonal or overtone")
    if kind == "orthogonal":
        depth_scale = 1.0 / math.sqrt(2 * model.cfg.num_layers)
        for name, m in model.named_modules():
            if isinstance(m, Linear) and name.startswith("blocks."):
                torch.nn.init.orthogonal_(m.weight)
                if m.zero_init:
                    m.weight.mul_(depth_scale)
    else:
        w = model.tok_emb.weight
        u, _, vh = torch.linalg.svd(torch.randn_like(w), full_matrices=False)
        s = torch.arange(1, vh.size(0) + 1, dtype=w.dtype).rsqrt()
        emb = (u * s[None]) @ vh
        w.copy_(emb * (model.cfg.tied_embed_init_std / emb.std()))
