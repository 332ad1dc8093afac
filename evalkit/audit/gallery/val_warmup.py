"""ILLEGAL (rule C3): a "compile warm-up" that takes a training step on validation tokens.

Public case: the PR #1530 thread, where a warm-up meant to trigger compilation stepped an
optimizer on real validation batches. Warm-ups are legal only on random tokens
(`ctx.warmup_tokens`). This one runs one SGD step on the first two windows of the split
without telling the ledger, then scores with the changed weights: every score now depends
on those tokens, including scores fixed before them. The audit's causality check FAILS it.
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.strategies.sliding import Sliding


class ValidationWarmup(Sliding):
    name = "gallery:val-warmup"

    def run(self, ctx) -> None:
        n = min(ctx.data.n_tokens, 2 * self.opts.seq_len + 1)
        ids = torch.from_numpy(ctx.data.tokens[:n].astype(np.int64)).to(ctx.device)
        opt = torch.optim.SGD(ctx.model.parameters(), lr=0.05)
        with torch.enable_grad():
            ctx.model.loss(ids[None, :-1], ids[None, 1:]).backward()  # the "warm-up" step
        opt.step()
        opt.zero_grad(set_to_none=True)
        super().run(ctx)
