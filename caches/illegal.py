"""ILLEGAL on purpose: the hashed-bucket ratio cache that public submissions were disqualified
for (openai/parameter-golf PR #886, #1147, #978). Kept only as a fixture for the auditor and
the tests, which must see it FAIL the normalization check (rule C2). Never use it to score.

p_ng(x) = count(bucket(ctx, x)) / count(bucket(ctx)) from the highest order whose context
bucket is non-empty. Bucket collisions make many x share counts, so sum_x p_ng(x) is far from
1 (hundreds), and the "mixture" (1-w) p_model + w p_ng is not a distribution.
"""
from __future__ import annotations

import numpy as np


class IllegalHashedRatioMixer:
    name = "illegal-hashed"

    def __init__(self, vocab_size: int, spec: str = "", buckets: int = 4096, orders=(2, 5),
                 w: float = 0.3) -> None:
        self.V, self.B, self.w = vocab_size, buckets, w
        self.lo, self.hi = orders
        self.ctx_cnt = np.zeros((self.hi + 1, buckets), np.int64)
        self.pair_cnt = np.zeros((self.hi + 1, buckets), np.int64)

    def bind(self, tokens: np.ndarray) -> None:
        self.tokens = np.asarray(tokens, dtype=np.int64)

    def _bucket(self, seq) -> int:
        return hash(tuple(int(v) for v in seq)) % self.B

    def _ratios(self, t: int) -> np.ndarray:
        for n in range(self.hi, self.lo - 1, -1):
            if n - 1 > t:
                continue
            ctx = self.tokens[t - n + 1:t]
            cb = self._bucket(ctx)
            if self.ctx_cnt[n, cb] > 0:
                pb = [self._bucket(list(ctx) + [a]) for a in range(self.V)]
                return self.pair_cnt[n, pb] / self.ctx_cnt[n, cb]
        return np.zeros(self.V)

    def distribution(self, positions, model_logp) -> np.ndarray:
        out = np.empty((len(positions), self.V))
        for i, t in enumerate(positions):
            p = (1 - self.w) * np.exp(np.asarray(model_logp[i], np.float64)) + self.w * self._ratios(int(t))
            out[i] = np.log(np.maximum(p, 1e-300))
        return out

    def score(self, positions, model_logp, model_entropy=None) -> np.ndarray:
        d = self.distribution(positions, model_logp)
        return d[np.arange(len(positions)), self.tokens[np.asarray(positions)]]

    def update(self, positions) -> None:
        for t in positions:
            t = int(t)
            for n in range(self.lo, self.hi + 1):
                if n - 1 > t:
                    break
                ctx = list(self.tokens[t - n + 1:t])
                self.ctx_cnt[n, self._bucket(ctx)] += 1
                self.pair_cnt[n, self._bucket(ctx + [int(self.tokens[t])])] += 1

    def memory_bytes(self) -> int:
        return int(self.ctx_cnt.nbytes + self.pair_cnt.nbytes)
