"""ILLEGAL (rule C1): a mixing weight normalized over the batch, which includes later tokens.

A bigram cache (normalized over the alphabet, add-one smoothed, learned only after
scoring through `ctx.tokens_for_learning`: legal so far) is mixed into the model with
weight w_p = 0.3 c_p / mean_batch(c), c_p = how often the context token x_{p-1} was seen.
The batch mean includes the contexts of positions later in the same call, so the weight
at p depends on tokens after p scored in the same call. The causality check (a move at
p < t in the call that scored t) FAILS it.
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.audit.gallery.windows import batch_rows
from evalkit.strategies.sliding import Sliding


class BatchNormalizedWeight(Sliding):
    name = "gallery:batch-normalized-weight"

    def run(self, ctx) -> None:
        V = ctx.model.cfg.vocab_size
        tok = ctx.data.tokens.astype(np.int64)
        pair, seen = np.zeros((V, V)), np.zeros(V)
        windows, B = self.plan(ctx.data), self.opts.batch_windows
        with torch.inference_mode():
            for i in range(0, len(windows), B):
                positions, rows, _ = batch_rows(ctx, windows[i:i + B])
                prev = tok[positions - 1]
                c = seen[prev] + 1.0
                w = np.minimum(0.3 * c / c.mean(), 0.9)  # the mean runs over the whole call: later tokens too
                q = (pair[prev] + 1.0) / (seen[prev] + V)[:, None]  # (n, V) normalized
                mixed = (1 - w)[:, None] * np.exp(rows.double().numpy()) + w[:, None] * q
                ctx.score(positions, torch.from_numpy(np.log(mixed)))
                y = ctx.tokens_for_learning(positions).astype(np.int64)
                np.add.at(pair, (prev, y), 1.0)
                np.add.at(seen, prev, 1.0)
