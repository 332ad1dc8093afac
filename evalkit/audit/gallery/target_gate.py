"""ILLEGAL (rule C1): a mixing gate that reads a property of the target token.

Public case: PR #1420's "word-start" expert gate decided how much to trust an expert from
whether x_t starts a word. Here the gate reads the target's byte length (a property of
x_t; the strategy sees no tokenizer): the cache gets weight 0.6 on targets of 4 bytes or
more and 0.05 otherwise. Both mixtures are normalized, so only replacing x_t shows it:
the audit's target-independence check FAILS it.
"""
from __future__ import annotations

import numpy as np

from caches.illegal import SlowMixer
from evalkit.audit.gallery.mixing import SlidingWithMixer


class TargetGateMixer(SlowMixer):
    name = "target-gate"

    def __init__(self, vocab_size: int, target_bytes: np.ndarray):
        self.V, self.target_bytes = vocab_size, target_bytes
        self.counts = np.ones(vocab_size)  # add-one unigram cache of scored tokens

    def distribution(self, positions, model_logp) -> np.ndarray:
        p_model = np.exp(np.asarray(model_logp, np.float64))
        w = np.where(self.target_bytes[np.asarray(positions)] >= 4, 0.6, 0.05)[:, None]  # reads x_t
        p = (1 - w) * p_model + w * (self.counts / self.counts.sum())[None, :]
        return np.log(np.maximum(p, 1e-300))

    def update(self, positions) -> None:
        np.add.at(self.counts, self.tok[np.asarray(positions, dtype=np.int64)], 1)

    def memory_bytes(self) -> int:
        return int(self.counts.nbytes)


class TargetLengthGate(SlidingWithMixer):
    name = "gallery:target-gate"

    def make_mixer(self, ctx) -> TargetGateMixer:
        return TargetGateMixer(ctx.model.cfg.vocab_size, ctx.data.target_bytes)
