"""Multi-order learning that stores a context seen once by where it was seen (Numba).

Why: on text most contexts of 3+ tokens are new or seen once (store.NOVEL), yet storing every
order's n-gram costs one probe per order per token (10 for orders 2-11), and those probes
were the pass's time. A context seen exactly once, at the learned position q (it ends at
q-1), has statistics implied by q alone: count 1, one continuation tokens[q] with count 1.
Every longer context at a position t that ends with it was seen at most once too, and it was
seen iff the tokens before t and before q agree that far back. So the table keeps:

* every context seen twice or more, with its exact fields (count, distinct, best, best
  count), and the n-gram counts of its continuations (the pair field of (context, a));
* a context seen once whose one-token-shorter suffix was seen twice or more (or which has
  the shortest length in use): count 1 and q in bits 0..31 of the packed word;
* nothing for the rest: their counts are read by comparing tokens with q's.

Counts stay exact for any learning order: everything here is a function of the set of
learned positions. A walk probes the table only up to the first context seen at most once,
then compares tokens; learning probes the n-grams of the contexts seen twice or more, plus
one slot. When a context seen once (at q) is seen again (at t), the contexts t and q share
become explicit ("split"), up to the first length where they differ, whose two contexts are
stored as seen once (at t and at q).

Slot fields: see ``table``; here bits 0..31 of a context whose count is 1 hold q, not best
and distinct. The pair field of (context, a) is kept only while the context's count is 2 or
more (it is 0 before: nothing touches it while the context is seen at most once).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .table import F16, F32, SEED, bump_ctx, bump_pair, find, find_or_insert, fix_key, get_counts, get_ctx, mix, \
    put_counts, seq_key


@njit(cache=True, nogil=True, inline="always")
def set_seen_once(tab, side, s, q):
    """Slot s as a context seen once, followed by position q (its pair field is kept)."""
    p, _, _ = get_counts(tab, side, s)
    return put_counts(tab, side, s, p, 1, 1, np.int64(q) >> 16, np.int64(q) & np.int64(F16))


@njit(cache=True, nogil=True, inline="always")
def seen_at(tab, s):
    """The position q that followed the context of slot s, seen once."""
    return np.int64(tab[s, 1] & F32)


@njit(cache=True, nogil=True, inline="always")
def fill_once(stat, L, x):
    stat[0, L] = 1
    stat[1, L] = 1
    stat[2, L] = 1
    stat[3, L] = x


@njit(cache=True, nogil=True, inline="always")
def walk_once(tab, side, tokens, cstart, ck, r, t, lim, lmin, hi, stat, cslot, pslot, contiguous):
    """Context statistics of position t (tokens[:t]) for lengths lmin..lim into stat[0..3, L]
    (count, distinct, best count, best token). ck[r, L] = key of tokens[t-L..t-1]; a position
    that follows the previous one takes a context's slot from pslot when it is known. A
    context of q reaches back to cstart[q] at most (see kernels.advance_kernel).

    Returns (best_L, M, q): best_L the longest seen context (0: none); M the first length
    whose context is seen at most once (top + 1 if none), q where it was seen (-1: never).
    cslot[L] holds the slots of lengths lmin..M-1 (and M when seen once)."""
    best_L = 0
    top = min(hi - 1, lim)
    L = lmin
    while L <= top:
        s = pslot[L] if contiguous and L > lmin else np.int64(-1)
        if s < 0:
            s = find(tab, ck[r, L])
            if s < 0:
                return best_L, L, np.int64(-1)
        c, d, b, tk = get_ctx(tab, side, s)
        if c == 0:
            return best_L, L, np.int64(-1)
        cslot[L] = s
        if c == 1:
            q = seen_at(tab, s)
            x = np.int64(tokens[q])
            j = L
            while True:
                fill_once(stat, j, x)
                best_L = j
                j += 1
                if j > top or q - j < cstart[q] or tokens[t - j] != tokens[q - j]:
                    break
            return best_L, L, q
        stat[0, L] = c
        stat[1, L] = d
        stat[2, L] = b
        stat[3, L] = tk
        best_L = L
        L += 1
    return best_L, L, np.int64(-1)


@njit(cache=True, nogil=True, inline="always")
def split(tab, side, tokens, cstart, t, x, lim, q, M, hi, ck, pk, r, cslot, pslot):
    """The context of length M at t was seen once, at q: every context t and q share becomes
    explicit with count 2 and both continuations; the first pair that differs is stored as
    seen once. Returns (new main keys, new side entries)."""
    new_main = 0
    new_side = 0
    top = min(hi - 1, lim)
    xq = np.int64(tokens[q])
    h = mix(SEED, xq)  # key of tokens[q-L..q] (the n-gram (context, xq)), grown with L
    for j in range(1, M + 1):
        h = mix(h, tokens[q - j])
    L = M
    s = cslot[M]
    while True:
        if L > M:
            s, ins = find_or_insert(tab, ck[r, L])
            new_main += ins
        ps, ins = find_or_insert(tab, pk[r, L + 1])
        new_main += ins
        p, _, _ = get_counts(tab, side, s)
        _, ns = bump_pair(tab, side, ps)  # (context, x): 0 -> 1, the field untouched before
        new_side += ns
        if x == xq:
            _, ns = bump_pair(tab, side, ps)
            new_side += ns + put_counts(tab, side, s, p, 2, 2, 1, xq)
        else:
            qs, ins = find_or_insert(tab, fix_key(h))
            _, ns = bump_pair(tab, side, qs)
            new_main += ins
            new_side += ns + put_counts(tab, side, s, p, 2, 1, 2, xq)  # ties keep the first: xq
        pslot[L + 1] = ps
        L += 1
        if L > top or q - L < cstart[q] or tokens[t - L] != tokens[q - L]:
            break
        h = mix(h, tokens[q - L])
    if L <= hi - 1:  # the first length where t's and q's contexts differ: each seen once
        if L <= top:
            s, ins = find_or_insert(tab, ck[r, L])
            new_main += ins
            new_side += set_seen_once(tab, side, s, t)
        if q - L >= cstart[q]:
            s, ins = find_or_insert(tab, seq_key(tokens, q - 1, L))
            new_main += ins
            new_side += set_seen_once(tab, side, s, q)
    return new_main, new_side


@njit(cache=True, nogil=True, inline="always")
def learn_once(tab, side, tokens, cstart, t, x, lim, lmin, hi, ck, pk, r, cslot, pslot, pfound, pknown, M, q):
    """Learn t given ``walk_once``'s (M, q) and cslot. pfound[L+1] (L+1 <= pknown, >= 0): the
    slot of the n-gram (context of length L, x), already found. Returns (new main, new side)."""
    new_main = 0
    new_side = 0
    top = min(hi - 1, lim)
    for L in range(lmin, hi + 1):
        pslot[L] = -1
    for L in range(lmin, min(M, top + 1)):  # contexts seen twice or more
        if L + 1 <= pknown and pfound[L + 1] >= 0:
            ps = pfound[L + 1]
        else:
            ps, ins = find_or_insert(tab, pk[r, L + 1])
            new_main += ins
        p, ns = bump_pair(tab, side, ps)
        new_side += ns + bump_ctx(tab, side, cslot[L], p, x)
        pslot[L + 1] = ps
    if M > top:
        return new_main, new_side
    if q < 0:  # a context never seen: now seen once (longer ones follow from it)
        s, ins = find_or_insert(tab, ck[r, M])
        return new_main + ins, new_side + set_seen_once(tab, side, s, t)
    nm, ns = split(tab, side, tokens, cstart, t, x, lim, q, M, hi, ck, pk, r, cslot, pslot)
    return new_main + nm, new_side + ns
