"""ILLEGAL (rule C1): a mixing weight normalized over the batch, which includes later tokens.

A bigram cache (normalized over the alphabet, add-one smoothed, learned only after
scoring: legal so far) is mixed into the model with weight w_p = 0.3 c_p / mean_batch(c),
c_p = how often the context token x_{p-1} was seen. The batch mean includes the contexts
of positions later in the same call, so the weight at p depends on tokens after p that
are scored in the same call. The causality check (a move at p < t in the call that scored
t) FAILS it.
"""
from __future__ import annotations

import numpy as np

from evalkit.audit.gallery.mixing import SlidingWithMixer


class BatchWeightMixer:
    name = "batch-weight"

    def __init__(self, vocab_size: int):
        self.V = vocab_size
        self.pair = np.zeros((vocab_size, vocab_size), np.float64)
        self.ctx_count = np.zeros(vocab_size, np.float64)
        self.weights: dict[int, float] = {}

    def bind(self, tokens: np.ndarray) -> None:
        self.tok = np.asarray(tokens, dtype=np.int64)

    def _mix(self, positions: np.ndarray, model_logp: np.ndarray, w: np.ndarray) -> np.ndarray:
        prev = self.tok[positions - 1]
        q = (self.pair[prev] + 1.0) / (self.ctx_count[prev] + self.V)[:, None]  # (n, V) normalized
        return np.log((1 - w)[:, None] * np.exp(np.asarray(model_logp, np.float64)) + w[:, None] * q)

    def score(self, positions, model_logp, model_entropy=None) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        c = self.ctx_count[self.tok[positions - 1]] + 1.0
        w = np.minimum(0.3 * c / c.mean(), 0.9)  # the mean runs over the whole call: later tokens too
        self.weights.update(zip(positions.tolist(), w.tolist()))
        d = self._mix(positions, model_logp, w)
        return d[np.arange(positions.size), self.tok[positions]]

    def distribution(self, positions, model_logp) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        w = np.array([self.weights[int(p)] for p in positions])  # the weight the fast path used
        return self._mix(positions, model_logp, w)

    def update(self, positions) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        np.add.at(self.pair, (self.tok[positions - 1], self.tok[positions]), 1.0)
        np.add.at(self.ctx_count, self.tok[positions - 1], 1.0)

    def memory_bytes(self) -> int:
        return int(self.pair.nbytes)


class BatchNormalizedWeight(SlidingWithMixer):
    name = "gallery:batch-normalized-weight"

    def make_mixer(self, ctx) -> BatchWeightMixer:
        return BatchWeightMixer(ctx.model.cfg.vocab_size)
