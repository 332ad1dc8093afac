"""The two legal predictors: ``combine`` (p at the target, O(1) per position, vectorised) and
``full`` (the whole (V,) distribution at one position, the audit's slow path).

Witten-Bell interpolation, not Kneser-Ney: WB needs only c(h), c(h, x) and T(h) (distinct
continuations), all maintained exactly and incrementally by the store in O(1) per order;
interpolated KN would additionally need continuation counts N1+(., w) of every lower-order
n-gram and per-context counts-of-counts, i.e. more table fields (memory) and more probes per
update (speed), for a gain that shrinks as the cache grows. The recursion

    p_0(x) = (u(x) + 1) / (U + V)                          add-one unigram, sums to 1
    p_n(x) = (c(h,x) + T(h) p_{n-1}(x)) / (c(h) + T(h))    if c(h) > 0, else p_{n-1}(x)

sums to exactly 1 by construction because c(h) = sum_x c(h, x) and T(h) = #{x: c(h,x) > 0}.

Mixture: (1-w) p_model + w p_WB, w = wmax * sigmoid(slope (H - h0)) * C / (C + c0), with H the
model's entropy (nats) at the position and C the count of the longest seen context.
Tilt: hint h = the best continuation of the longest seen context whose best count is at least
``gate`` of its count (any seen context when gate = 0); strength b = beta * g, g = 1 with
``scale=const``, else sigmoid(slope (H - h0)) * bc / (C + 1); p'(a) = p(a) e^{b [a=h]} /
(1 + p(h)(e^b - 1)). Neither w, the hint nor b reads the target: C1/C2/C5 legal.

What the store's pass computes per position (``kernels.advance_kernel``) is the aux; the
entropy H and the model's log-probs at the target (and hint) come from the engine, which
computes them on the device, so only (n,) arrays reach this module on the fast path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels as K
from .store import NgramStore


def row_entropy(model_logp: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of a (n, V) log-distribution (float64 reference)."""
    lp = np.ascontiguousarray(model_logp)
    if lp.dtype not in (np.float32, np.float64):
        lp = lp.astype(np.float64)
    out = np.empty(lp.shape[0], np.float64)
    K.entropy_kernel(lp, out)
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class WittenBellMixture:
    wmax: float = 0.3
    h0: float = 2.0
    slope: float = 2.0
    c0: float = 2.0

    kind = K.MIX

    def weight(self, C, entropy):
        """w per position; 0 where no context was seen (C = 0)."""
        C = np.asarray(C, np.float64)
        return np.where(C > 0, self.wmax * _sigmoid(self.slope * (np.asarray(entropy) - self.h0)) * (C / (C + self.c0)),
                        0.0)

    def combine(self, out_i, out_f, target_logp, hint_logp, entropy) -> np.ndarray:
        w = self.weight(out_f[:, 0], entropy)
        with np.errstate(divide="ignore"):
            mixed = np.log((1.0 - w) * np.exp(target_logp) + w * out_f[:, 1])
        return np.where(w == 0.0, target_logp, mixed)

    def full(self, st: NgramStore, t: int, row: np.ndarray, entropy: float) -> np.ndarray:
        p_ng, _, C = self.ngram_distribution(st, t)
        w = float(self.weight(np.array([C]), np.array([entropy]))[0])
        if w == 0.0:
            return row.copy()
        return np.log((1.0 - w) * np.exp(row) + w * p_ng)

    def ngram_distribution(self, st: NgramStore, t: int) -> tuple[np.ndarray, int, int]:
        """(p_WB over the vocabulary, longest context length, its count) at position t."""
        p = np.empty(st.vocab_size, np.float64)
        best_L, C = K.wb_full_kernel(st.tab, st.side, st.unigram, st.total, st.vocab_size,
                                     st.tokens, st.context_start, int(t), st.lo, st.hi, p)
        return p, int(best_L), int(C)


@dataclass
class NormalizedTilt:
    """Defaults (the better rule in README's ablation): gate 0.8, constant beta 2.625, i.e.
    the records' rule backing off over orders; gate=0,scale=entropy,beta=1.5 is the old one."""

    beta: float = 2.625
    h0: float = 2.0
    slope: float = 2.0
    gate: float = 0.8  # hint only from a context whose best count is >= gate x its count
    const: bool = True  # strength beta everywhere (False: beta * sigmoid(slope(H-h0)) * bc/(C+1))

    kind = K.TILT

    def strength(self, factor, entropy):
        if self.const:
            return self.beta * np.asarray(factor, np.float64)
        return self.beta * _sigmoid(self.slope * (np.asarray(entropy) - self.h0)) * factor

    def combine(self, out_i, out_f, target_logp, hint_logp, entropy, targets=None) -> np.ndarray:
        b = np.where(out_i >= 0, self.strength(out_f[:, 0], entropy), 0.0)
        return target_logp + np.where(out_i == targets, b, 0.0) - np.log1p(np.exp(hint_logp) * np.expm1(b))

    def full(self, st: NgramStore, t: int, row: np.ndarray, entropy: float) -> np.ndarray:
        out_i, out_f = st.run(np.array([t], np.int64), K.TILT, self.gate, self.const, learn=False)
        out = row.copy()
        if out_i[0] < 0:
            return out
        h = int(out_i[0])
        b = float(self.strength(out_f[:, 0], np.array([entropy]))[0])
        out -= np.log1p(np.exp(row[h]) * np.expm1(b))  # uses the model row, not a sum
        out[h] += b
        return out
