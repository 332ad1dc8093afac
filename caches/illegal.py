"""ILLEGAL on purpose: the hashed-bucket ratio cache that public submissions were disqualified
for (openai/parameter-golf PR #886, #1147, #978). Kept only as a fixture for the auditor and
the tests, which must see it FAIL the normalization check (rule C2). Never use it to score.

p_ng(x) = count(bucket(ctx, x)) / count(bucket(ctx)) from the highest order whose context
bucket is non-empty. Bucket collisions make many x share counts, so sum_x p_ng(x) is far from
1 (hundreds), and the "mixture" (1-w) p_model + w p_ng is not a distribution.
"""
from __future__ import annotations

import numpy as np

_MUL, _MOD = 1_000_003, 1 << 31


class SlowMixer:
    """Base of the illegal fixtures (here and in evalkit/audit/gallery/): `score` is simply the
    full `distribution` read at the target, so only `distribution` and `update` differ."""

    def bind(self, tokens: np.ndarray) -> None:
        self.tok = np.asarray(tokens, dtype=np.int64)

    def score(self, positions, model_logp, model_entropy=None) -> np.ndarray:
        d = self.distribution(positions, model_logp)
        return d[np.arange(len(positions)), self.tok[np.asarray(positions)]]


class IllegalHashedRatioMixer(SlowMixer):
    """The hashed-bucket ratio, vectorised over the alphabet so the audit's self-test stays fast."""

    name = "illegal-hashed"

    def __init__(self, vocab_size: int, buckets: int = 512, orders: tuple[int, int] = (2, 3), w: float = 0.3):
        self.V, self.B, self.w = vocab_size, buckets, w
        self.lo, self.hi = orders
        self.ctx_cnt = np.zeros((self.hi + 1, buckets), np.int64)
        self.pair_cnt = np.zeros((self.hi + 1, buckets), np.int64)

    def _ctx_hash(self, t: int, n: int) -> int:
        h = 0
        for v in self.tok[t - n + 1:t]:
            h = (h * _MUL + int(v) + 1) % _MOD
        return h

    def _ratios(self, t: int) -> np.ndarray:
        for n in range(self.hi, self.lo - 1, -1):
            if t - n + 1 < 0:
                continue
            h = self._ctx_hash(t, n)
            if self.ctx_cnt[n, h % self.B] > 0:
                pair = (h * _MUL + np.arange(self.V) + 1) % _MOD % self.B
                return self.pair_cnt[n, pair] / self.ctx_cnt[n, h % self.B]
        return np.zeros(self.V)

    def distribution(self, positions, model_logp) -> np.ndarray:
        out = np.empty((len(positions), self.V))
        for i, t in enumerate(positions):
            p = (1 - self.w) * np.exp(np.asarray(model_logp[i], np.float64)) + self.w * self._ratios(int(t))
            out[i] = np.log(np.maximum(p, 1e-300))
        return out

    def update(self, positions) -> None:
        for t in (int(t) for t in positions):
            for n in range(self.lo, self.hi + 1):
                if t - n + 1 < 0:
                    break
                h = self._ctx_hash(t, n)
                self.ctx_cnt[n, h % self.B] += 1
                self.pair_cnt[n, (h * _MUL + int(self.tok[t]) + 1) % _MOD % self.B] += 1

    def memory_bytes(self) -> int:
        return int(self.ctx_cnt.nbytes + self.pair_cnt.nbytes)
