"""Pure-Python reference of the store and both predictors (dicts of tuples, obvious loops).

Same estimator as the Numba kernels, written independently of the hashing: the tests demand
equality to 1e-12. Slow (use on streams of a few thousand tokens).
"""
from __future__ import annotations

import math


class RefNgram:
    def __init__(self, vocab_size: int, lo: int = 2, hi: int = 11) -> None:
        self.V, self.lo, self.hi = vocab_size, lo, hi
        self.pair: dict[tuple, int] = {}       # (ctx..., next) -> count
        self.ctx: dict[tuple, list] = {}       # ctx -> [count, distinct, best_tok, best_cnt]
        self.uni = [0] * vocab_size
        self.total = 0
        self.tokens: list[int] = []
        self.start: list[int] = []  # the first position a context of t may reach back to

    def bind(self, tokens, context_start=None) -> None:
        self.tokens = [int(x) for x in tokens]
        self.start = [0] * len(self.tokens) if context_start is None else [int(c) for c in context_start]

    def update(self, positions) -> None:
        tk = self.tokens
        for t in positions:
            t = int(t)
            x = tk[t]
            self.uni[x] += 1
            self.total += 1
            for n in range(self.lo, self.hi + 1):
                k = n - 1
                if k > t - self.start[t]:
                    break
                h = tuple(tk[t - k:t])
                c = self.pair.get(h + (x,), 0) + 1
                self.pair[h + (x,)] = c
                st = self.ctx.setdefault(h, [0, 0, 0, 0])
                st[0] += 1
                if c == 1:
                    st[1] += 1
                if c > st[3]:
                    st[2], st[3] = x, c

    def _contexts(self, t: int):
        """[(ctx tuple, stats)] for orders lo..hi with a seen context, shortest first."""
        out = []
        for n in range(self.lo, self.hi + 1):
            k = n - 1
            if k > t - self.start[t]:
                break
            h = tuple(self.tokens[t - k:t])
            st = self.ctx.get(h)
            if st is not None and st[0] > 0:
                out.append((h, st))
        return out

    def wb_prob(self, t: int, a: int) -> float:
        p = (self.uni[a] + 1.0) / (self.total + self.V)
        for h, (C, T, _, _) in self._contexts(t):
            p = (self.pair.get(h + (a,), 0) + T * p) / (C + T)
        return p


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def entropy(row) -> float:
    return -sum(math.exp(v) * v for v in row if v > -math.inf)


def mix_logp(ref: RefNgram, t: int, a: int, row, wmax=0.3, h0=2.0, slope=2.0, c0=2.0) -> float:
    ctxs = ref._contexts(t)
    lp = float(row[a])
    if not ctxs:
        return lp
    C = ctxs[-1][1][0]
    w = wmax * sigmoid(slope * (entropy(row) - h0)) * (C / (C + c0))
    if w == 0.0:
        return lp
    return math.log((1.0 - w) * math.exp(lp) + w * ref.wb_prob(t, a))


def tilt_logp(ref: RefNgram, t: int, a: int, row, beta=2.625, h0=2.0, slope=2.0, gate=0.8, const=True) -> float:
    """The hint comes from the longest seen context whose best count is >= gate x its count
    (any seen context if gate = 0); strength beta (const) or beta*sigmoid(slope(H-h0))*bc/(C+1)."""
    lp = float(row[a])
    for _, (C, _, hint, bc) in reversed(ref._contexts(t)):
        if gate <= 0 or bc / C >= gate:
            break
    else:
        return lp
    b = beta if const else beta * sigmoid(slope * (entropy(row) - h0)) * (bc / (C + 1.0))
    return lp + (b if a == hint else 0.0) - math.log1p(math.exp(float(row[hint])) * math.expm1(b))


def records_tilt(tokens, order: int = 16, threshold: float = 0.8, beta: float = 2.625):
    """The records' token-only tilt, written from its description (anchors.md), not from any
    kernel: for each position t in stream order, the context is the previous order-1 tokens;
    if it was seen, its most frequent continuation is the hint when (that continuation's count)
    / (context count) >= threshold; the boost is beta where there is a hint. Then t is learned.
    Ties: a continuation replaces the best only with a strictly larger count. Returns
    (hints, betas): lists with -1 / 0.0 where there is no hint."""
    tk = [int(x) for x in tokens]
    k = order - 1
    ctx: dict[tuple, list] = {}  # context -> [count, best token, best count]
    nxt: dict[tuple, int] = {}  # context + (token,) -> count
    hints, betas = [], []
    for t, x in enumerate(tk):
        h = tuple(tk[t - k:t]) if t >= k else None
        st = ctx.get(h) if h is not None else None
        if st is not None and st[2] / st[0] >= threshold:
            hints.append(st[1])
            betas.append(beta)
        else:
            hints.append(-1)
            betas.append(0.0)
        if h is None:
            continue
        c = nxt.get(h + (x,), 0) + 1
        nxt[h + (x,)] = c
        if st is None:
            st = ctx[h] = [0, x, 0]
        st[0] += 1
        if c > st[2]:
            st[1], st[2] = x, c
    return hints, betas
