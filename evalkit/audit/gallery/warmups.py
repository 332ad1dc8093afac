"""ILLEGAL (rule C3): "warm-ups" that step an optimizer on validation tokens the audit's
old fixed positions never touched: the first window, or the last tokens of the split.

Public case: the PR #1530 thread (a compile warm-up that trained on real validation
batches). Here one SGD step on a single window (the first, or the tail) runs before any
score, past the ledger; every score then depends on those tokens. The audit perturbs
inside the first and the last window, and the suffix test replaces the split's last
third: causality FAILS both.
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.strategies.sliding import Sliding


def sgd_step(ctx, lo: int, hi: int, lr: float = 0.05) -> None:
    ids = torch.from_numpy(ctx.data.tokens[lo:hi].astype(np.int64)).to(ctx.device)
    opt = torch.optim.SGD(ctx.model.parameters(), lr=lr)
    with torch.enable_grad():
        ctx.model.loss(ids[None, :-1], ids[None, 1:]).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


class FirstWindowWarmup(Sliding):
    name = "gallery:warmup-first-window"

    def run(self, ctx) -> None:
        sgd_step(ctx, 0, min(ctx.data.n_tokens, self.opts.seq_len + 1))
        super().run(ctx)


class TailWarmup(Sliding):
    name = "gallery:warmup-tail"

    def run(self, ctx) -> None:
        n = ctx.data.n_tokens
        sgd_step(ctx, max(0, n - self.opts.seq_len - 1), n)
        super().run(ctx)
