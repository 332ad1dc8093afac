"""The two legal predictors: fast path (p at the target, O(orders)) and slow path (full (n, V)).

Witten-Bell interpolation, not Kneser-Ney: WB needs only c(h), c(h, x) and T(h) (distinct
continuations), all maintained exactly and incrementally by the store in O(1) per order;
interpolated KN would additionally need continuation counts N1+(., w) of every lower-order
n-gram and per-context counts-of-counts, i.e. more table fields (memory) and more probes per
update (speed), for a gain that shrinks as the cache grows. The recursion

    p_0(x) = (u(x) + 1) / (U + V)                          add-one unigram, sums to 1
    p_n(x) = (c(h,x) + T(h) p_{n-1}(x)) / (c(h) + T(h))    if c(h) > 0, else p_{n-1}(x)

sums to exactly 1 by construction because c(h) = sum_x c(h, x) and T(h) = #{x: c(h,x) > 0}.

Mixture: (1-w) p_model + w p_WB, w = wmax * sigmoid(slope (H - h0)) * C / (C + c0), with H the
model's entropy (nats) at the position and C the count of the longest seen context. Tilt:
hint = argmax continuation of the longest seen context, beta = beta_max * sigmoid(slope
(H - h0)) * bc / (C + 1); p'(a) = p(a) e^{beta [a=h]} / (1 + p(h)(e^beta - 1)).
Neither w, the hint nor beta reads the target, so both are C1/C2/C5 legal.

Entropy: the fast path needs the model row only at the target (and at the hint), but H needs
the whole row (V exp's, ~1 us/token at V = 1024). Callers that already have it (the engine can
compute it on the GPU next to the log-softmax) pass ``entropy``; otherwise it is computed here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels as K
from .store import NgramStore


def row_entropy(model_logp: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of a (n, V) log-distribution."""
    lp = np.ascontiguousarray(model_logp)
    if lp.dtype not in (np.float32, np.float64):
        lp = lp.astype(np.float64)
    out = np.empty(lp.shape[0], np.float64)
    K.entropy_kernel(lp, out)
    return out


def _gather(model_logp: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return model_logp[np.arange(cols.shape[0]), cols].astype(np.float64)


@dataclass
class WittenBellMixture:
    wmax: float = 0.3
    h0: float = 2.0
    slope: float = 2.0
    c0: float = 2.0

    def fast(self, st: NgramStore, pos: np.ndarray, model_logp: np.ndarray,
             entropy: np.ndarray) -> np.ndarray:
        # one kernel call per segment; it reads the target column of model_logp itself (no
        # gather, no temporaries: the engine calls this once per 64 tokens)
        out = np.empty(pos.shape[0], np.float64)
        bad = K.score_mix_kernel(st.tab, st.side, st.unigram, st.meta, st.vocab_size, st.tokens,
                                 pos, model_logp, entropy, st.lo, st.hi, self.wmax, self.h0,
                                 self.slope, self.c0, st.ck, st.pk, st.memo, st.stat, out)
        if bad >= 0:
            raise IndexError(f"position {bad} outside the bound stream")
        return out

    def ngram_distribution(self, st: NgramStore, t: int) -> tuple[np.ndarray, int, int]:
        """(p_WB over the vocabulary, longest context length, its count) at position t."""
        p = np.empty(st.vocab_size, np.float64)
        best_L, C = K.wb_full_kernel(st.tab, st.side, st.unigram, st.total, st.vocab_size,
                                     st.tokens, int(t), st.lo, st.hi, p)
        return p, int(best_L), int(C)

    def full(self, st: NgramStore, pos: np.ndarray, model_logp: np.ndarray,
             entropy: np.ndarray) -> np.ndarray:
        out = np.empty((pos.shape[0], st.vocab_size), np.float64)
        for i, t in enumerate(pos):
            lp = model_logp[i].astype(np.float64)
            p_ng, best_L, C = self.ngram_distribution(st, int(t))
            w = 0.0 if best_L == 0 else (
                self.wmax * (1.0 / (1.0 + np.exp(-self.slope * (entropy[i] - self.h0)))) * (C / (C + self.c0)))
            out[i] = lp if w == 0.0 else np.log((1.0 - w) * np.exp(lp) + w * p_ng)
        return out


@dataclass
class NormalizedTilt:
    beta: float = 1.5
    h0: float = 2.0
    slope: float = 2.0

    def hints(self, st: NgramStore, pos: np.ndarray, entropy: np.ndarray):
        hint = np.empty(pos.shape[0], np.int64)
        strength = np.empty(pos.shape[0], np.float64)
        bad = K.tilt_hint_kernel(st.tab, st.side, st.tokens, pos, entropy, st.lo, st.hi,
                                 self.beta, self.h0, self.slope, st.ck, st.pk, st.memo, st.stat,
                                 hint, strength)
        if bad >= 0:
            raise IndexError(f"position {bad} outside the bound stream")
        return hint, strength

    def fast(self, st: NgramStore, pos: np.ndarray, model_logp: np.ndarray,
             entropy: np.ndarray) -> np.ndarray:
        hint, b = self.hints(st, pos, entropy)
        tgt = st.tokens[pos].astype(np.int64)
        lp_t = _gather(model_logp, tgt)
        p_h = np.exp(_gather(model_logp, np.maximum(hint, 0)))
        return lp_t + np.where(hint == tgt, b, 0.0) - np.log1p(p_h * np.expm1(b))

    def full(self, st: NgramStore, pos: np.ndarray, model_logp: np.ndarray,
             entropy: np.ndarray) -> np.ndarray:
        hint, b = self.hints(st, pos, entropy)
        out = model_logp.astype(np.float64, copy=True)
        for i in range(pos.shape[0]):
            if hint[i] < 0:
                continue
            h = int(hint[i])
            z = np.log1p(np.exp(out[i, h]) * np.expm1(b[i]))  # uses the model row, not a sum
            out[i] -= z
            out[i, h] += b[i]
        return out
