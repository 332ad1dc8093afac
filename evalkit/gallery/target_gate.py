"""ILLEGAL (rule C1): a mixing gate that reads a property of the target token.

Public case: PR #1420's "word-start" expert gate decided how much to trust an expert from
whether x_t starts a word. Here the gate reads the target's byte length (a property of
x_t; the strategy sees no tokenizer): the cache gets weight 0.6 on targets of 4 bytes or
more and 0.05 otherwise. Both mixtures are normalized, so only replacing x_t shows it:
the audit's target-independence check FAILS it.
"""
from __future__ import annotations

import numpy as np

from evalkit.strategies.windows import Sliding


class TargetGateMixer:
    name = "target-gate"

    def __init__(self, vocab_size: int, target_bytes: np.ndarray):
        self.V, self.target_bytes = vocab_size, target_bytes
        self.counts = np.ones(vocab_size)  # add-one unigram cache of scored tokens

    def bind(self, tokens: np.ndarray) -> None:
        self.tok = np.asarray(tokens, dtype=np.int64)

    def distribution(self, positions, model_logp) -> np.ndarray:
        p_model = np.exp(np.asarray(model_logp, np.float64))
        w = np.where(self.target_bytes[np.asarray(positions)] >= 4, 0.6, 0.05)[:, None]  # reads x_t
        p = (1 - w) * p_model + w * (self.counts / self.counts.sum())[None, :]
        return np.log(np.maximum(p, 1e-300))

    def score(self, positions, model_logp, model_entropy=None) -> np.ndarray:
        d = self.distribution(positions, model_logp)
        return d[np.arange(len(positions)), self.tok[np.asarray(positions)]]

    def update(self, positions) -> None:
        np.add.at(self.counts, self.tok[np.asarray(positions, dtype=np.int64)], 1)

    def memory_bytes(self) -> int:
        return int(self.counts.nbytes)


class TargetLengthGate(Sliding):
    name = "gallery:target-gate"

    def run(self, ctx) -> None:
        ctx.mixer = TargetGateMixer(ctx.model.cfg.vocab_size, ctx.data.target_bytes)
        ctx.mixer.bind(ctx.data.tokens)
        super().run(ctx)
