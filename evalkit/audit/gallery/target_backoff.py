"""ILLEGAL (rules C1, C5): n-gram backoff that picks the order by looking at the target.

Public case (legality.md, C5): "backoff to the highest order where count(ctx, x_t) > 0".
Each order's distribution is normalized and the fast path agrees with it, so the
normalization check passes; but WHICH distribution is used depends on x_t, so replacing
x_t moves the distribution at t. The audit's target-independence check FAILS it.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from caches.illegal import SlowMixer
from evalkit.audit.gallery.mixing import SlidingWithMixer


class TargetBackoffMixer(SlowMixer):
    name = "target-backoff"

    def __init__(self, vocab_size: int, orders: tuple[int, ...] = (3, 2), w: float = 0.5):
        self.V, self.orders, self.w = vocab_size, orders, w
        self.counts = {n: defaultdict(lambda: defaultdict(int)) for n in orders}

    def _ctx(self, t: int, n: int) -> tuple:
        return tuple(int(v) for v in self.tok[max(0, t - n + 1):t])

    def distribution(self, positions, model_logp) -> np.ndarray:
        out = np.empty((len(positions), self.V))
        for i, t in enumerate(int(t) for t in positions):
            p = np.exp(np.asarray(model_logp[i], np.float64))
            for n in self.orders:
                c = self.counts[n].get(self._ctx(t, n))
                if c and c.get(int(self.tok[t]), 0) > 0:  # the oracle: was this order right about x_t?
                    row = np.zeros(self.V)
                    row[list(c)] = list(c.values())
                    p = (1 - self.w) * p + self.w * row / row.sum()
                    break
            out[i] = np.log(np.maximum(p, 1e-300))
        return out

    def update(self, positions) -> None:
        for t in (int(t) for t in positions):
            for n in self.orders:
                self.counts[n][self._ctx(t, n)][int(self.tok[t])] += 1

    def memory_bytes(self) -> int:
        return 0


class TargetKeyedBackoff(SlidingWithMixer):
    name = "gallery:target-backoff"

    def make_mixer(self, ctx) -> TargetBackoffMixer:
        return TargetBackoffMixer(ctx.model.cfg.vocab_size)
