"""ILLEGAL (rule C3): test-time training on a chunk BEFORE scoring that chunk.

Public case: "pre-eval" TTT over the validation set (issue #402, PR #1376). The legal
order is score chunk c, then train on chunk c. This strategy takes a gradient step of a
logit-bias adapter on each chunk's targets (read straight from the data, past the
ledger) and only then scores the chunk, so earlier positions of the chunk depend on later
tokens. The audit's causality check FAILS it (so does target independence).
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.strategies.registry import Strategy
from evalkit.engine.windows import plan_flat


class TrainThenScore(Strategy):
    name = "gallery:ttt-train-then-score"
    lr = 2.0

    def run(self, ctx) -> None:
        V = ctx.model.cfg.vocab_size
        bias = torch.zeros(V)
        with torch.inference_mode():
            for w in plan_flat(ctx.data.n_tokens, self.opts.seq_len):
                logp = ctx.log_probs(ctx.inputs(w.start, w.end)[None])[0].cpu()  # (T, V)
                y = torch.from_numpy(ctx.data.tokens[w.start:w.end].astype(np.int64))  # unscored targets
                p = torch.softmax(logp + bias, dim=-1).mean(0)
                bias = bias - self.lr * (p - torch.bincount(y, minlength=V) / y.numel())  # CE gradient step
                ctx.score(np.arange(w.start, w.end), torch.log_softmax(logp + bias, dim=-1))
