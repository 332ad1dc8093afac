"""Numba kernels: the one online pass (aux for scoring, then learn, per token) and slow paths.

``advance_kernel`` walks positions in the order given. For each position t it first reads
from the current counts what scoring t needs (the longest seen context's statistics, the
Witten-Bell probability of the target, the tilt's hint), then learns t. So a call over a
whole range is exactly "score t, learn t, score t+1, ..." in one kernel, with no Python per
token or per segment. Keys are computed a block of positions ahead (``table.segment_keys``)
and the slots of position i + AHEAD are prefetched while position i is processed: the
prefetch addresses depend on the tokens only, never on the counts, so prefetching ahead of
learning is exact. The hot loop works on reference-count-free views (``table.unmanaged``).
Several orders walk and learn with ``seen_once`` (a context seen once is stored by where it
was seen); a single order with ``walk_lazy`` and ``learn_lazy``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .seen_once import learn_once, walk_once
from .table import (find, get_ctx, find_or_insert, fix_key, get_counts, get_low, mix, put_counts,
                    prefetch_keys, rehash_kernel, segment_keys, seq_key, unmanaged, F10, F16, S42, S52, SEED,
                    SMALL_MAX, U64, WIDE, table_zeros)

__all__ = ["find", "get_counts", "get_low", "rehash_kernel", "seq_key", "table_zeros"]

BLOCK = 128  # positions whose keys are computed together (room is checked per block)
AHEAD = 16  # positions between a position's prefetch and its processing
PREFETCH_DEPTH = 5  # context lengths prefetched past the shortest (several orders)
OK, BAD_POSITION, NEED_ROOM = 0, -1, -2
MIX, TILT, LEARN = 0, 1, 2  # what advance_kernel computes before learning each position


@njit(cache=True, nogil=True)
def seq_key_with(tokens, t, L, a):
    """Key of (tokens[t-L .. t-1], a): the n-gram whose last token is a."""
    h = mix(SEED, a)
    for j in range(1, L + 1):
        h = mix(h, tokens[t - j])
    return fix_key(h)


@njit(cache=True, nogil=True)
def claim_kernel(learned, n_tok, positions):
    """Mark positions as learned before any is; returns -1, or the first position that is out
    of range, repeated or already learned (then nothing is marked)."""
    for i in range(positions.shape[0]):
        t = positions[i]
        if t < 0 or t >= n_tok or learned[t] != 0:
            for j in range(i):
                learned[positions[j]] = 0
            return t
        learned[t] = 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def walk_lazy(tab, side, ck, r, t, lim, hi, stat, cslot):
    """Context statistics of position t for a single order (lo == hi; context length hi - 1,
    none when longer than lim, the longest context t may use: see ``segment_keys``),
    ck[r, hi - 1] its key: stat[0..3, hi - 1] = count, distinct, best count, best token, and
    the slot goes to cslot (-1: absent) for learning t without probing again. Returns hi - 1
    if the context was seen, else 0. Several orders walk with ``seen_once.walk_once``."""
    L = hi - 1
    if L > lim:
        cslot[L] = -1
        return 0
    s = find(tab, ck[r, L])
    cslot[L] = s if s >= 0 else -1
    if s < 0:
        return 0
    c, d, b, tk = get_ctx(tab, side, s)
    if c == 0:
        return 0
    stat[0, L] = c
    stat[1, L] = d
    stat[2, L] = b
    stat[3, L] = tk
    return L


@njit(cache=True, nogil=True, inline="always")
def wb_target(tab, side, unigram, total, vocab, a, pk, r, lo, best_L, stat, pfound):
    """Witten-Bell p(a | prefix); pk[r, L+1] = key of (context of length L, a). The n-gram
    slots found go to pfound[L+1] (-1: absent or not looked up) for learning t without
    probing again."""
    p = (unigram[a] + 1.0) / (total + vocab)
    for L in range(max(lo - 1, 1), best_L + 1):
        if stat[0, L] == stat[2, L]:  # one continuation so far (or seen once): its count is implied
            pfound[L + 1] = -1
            c = (stat[2, L] if a == stat[3, L] else 0) + p
            # seen once: / 2 is exact, so the product by 0.5 is the same number, ~4x faster
            p = c * 0.5 if stat[0, L] == 1 else c / (stat[0, L] + 1)
            continue
        s = find(tab, pk[r, L + 1])
        # an absent n-gram reads the empty slot it would take, whose packed word is 0
        # (count 0): no branch on found / not found
        c, _, _ = get_counts(tab, side, s ^ (s >> 63))
        pfound[L + 1] = max(s, -1)
        T = stat[1, L]
        p = (c + T * p) / (stat[0, L] + T)
    return p


@njit(cache=True, nogil=True)
def tilt_choice(stat, best_L, lo, tau, const):
    """(hint, strength factor): the longest seen context whose best continuation holds at
    least tau of its count (any seen context when tau <= 0); factor 1 (const) or bc / (C+1)."""
    L = best_L
    while L >= max(lo - 1, 1) and L > 0:
        C = stat[0, L]
        bc = stat[2, L]
        if tau <= 0.0 or bc / C >= tau:
            return stat[3, L], (1.0 if const else bc / (C + 1.0))
        L -= 1
    return -1, 0.0


@njit(cache=True, nogil=True, inline="always")
def learn_lazy(tab, side, tokens, t, x, lim, hi, ck, pk, r, cslot, walked):
    """Learn t with a single order (context length hi-1). Why lazy: on text most contexts of
    15 tokens are seen once or always continue the same way, and then every n-gram count is
    implied by the context's own fields (count C, best token, best count bc: the n-gram
    (ctx, best) has count bc = C, any other 0). So n-gram entries are stored only once a
    context has had two different continuations (C > bc from then on): ~1 key per token
    instead of 2, and one probe instead of two. Counts stay exact."""
    new_main = 0
    new_side = 0
    if lim + 1 < hi:  # no context of length hi - 1 at t
        return 0, 0
    L = hi - 1
    if walked and cslot[L] >= 0:
        cs = cslot[L]
    else:
        cs, ins = find_or_insert(tab, ck[r, L])
        new_main += ins
    w = tab[cs, 1]
    if (w & WIDE) == U64(0) and ((w >> S42) & F10) < U64(SMALL_MAX):
        cc = np.int64((w >> S42) & F10)
        if cc > 0 and cc == np.int64((w >> S52) & F10) and x == np.int64(w & F16):
            tab[cs, 1] = w + (U64(1) << S42) + (U64(1) << S52)  # the one continuation again
            return new_main, new_side
    cp, cc, cb = get_counts(tab, side, cs)
    cd, ct = get_low(tab, cs)
    if cc == 0:
        cc, cb, cd, ct = 1, 1, 1, x
    elif cc == cb:
        if x == ct:
            cc += 1
            cb += 1
        else:  # the second continuation: store both n-gram counts from now on
            s1, i1 = find_or_insert(tab, seq_key_with(tokens, t, L, ct))
            new_side += put_counts(tab, side, s1, cb, 0, 0, 0, 0)
            s2, i2 = find_or_insert(tab, pk[r, hi])
            new_side += put_counts(tab, side, s2, 1, 0, 0, 0, 0)
            new_main += i1 + i2
            cc += 1
            cd = 2
    else:
        ps, ins = find_or_insert(tab, pk[r, hi])
        new_main += ins
        p, c, bb = get_counts(tab, side, ps)
        d, tk = get_low(tab, ps)
        new_side += put_counts(tab, side, ps, p + 1, c, bb, d, tk)
        cc += 1
        if p == 0:
            cd += 1
        if p + 1 > cb:  # strict: ties keep the continuation that got there first
            cb = p + 1
            ct = x
    new_side += put_counts(tab, side, cs, cp, cc, cb, cd, ct)
    return new_main, new_side


@njit(cache=True, nogil=True)
def worst_new_keys(lo, hi):
    """Most new slots (main or side table) learning one position can take: a single order's
    lazy learn takes 3; several orders take one n-gram per context length, and a split
    (seen_once.split) a context and two n-grams per length plus two contexts seen once."""
    if lo == hi:
        return 3
    return 3 * (hi - max(lo - 1, 1)) + 2


@njit(cache=True, nogil=True, inline="always")
def _prefetch_row(tab, ck, pk, positions, cstart, j, start, lo, hi):
    """Prefetch what position positions[j] will touch (its keys: ring row of j). Several
    orders touch the n-grams of the contexts seen twice or more, rarely more than
    PREFETCH_DEPTH lengths; a single order touches its two."""
    t = positions[j]
    fresh = j == start or positions[j - 1] + 1 != t
    top = hi if lo == hi else min(hi, max(lo - 1, 1) + PREFETCH_DEPTH)
    prefetch_keys(tab, ck, pk, (j - start) % (2 * BLOCK), t - cstart[t], fresh, lo, top)


@njit(cache=True, nogil=True)
def advance_kernel(tab, side, unigram, meta, vocab, tokens, cstart, positions, start, lo, hi, kind,
                   tau, const, learn, ck, pk, stat, slots, out_i, out_f):
    """For i = start.. in order: aux of positions[i] from the current counts, then learn it.

    kind MIX:  out_i = best continuation of the longest seen context (-1: none seen),
               out_f[i, 0] = that context's count C, out_f[i, 1] = p_WB(target).
    kind TILT: out_i = hint (-1: none), out_f[i, 0] = strength factor (tilt_choice).
    kind LEARN: learn only. learn=False: aux only, the state is not touched.
    meta = [entries, side entries, learned tokens, entry limit, side limit], kept current.
    cstart[t]: the first position a context of t may reach back to (0 for the whole stream;
    the document's start where documents may be scored out of stream order).
    Positions must have been claimed (claim_kernel). Returns (OK, n), or (NEED_ROOM, i):
    stopped before positions[i] because the next block might not fit; grow, call again from i.
    """
    # views without reference counts: see table.unmanaged (the arguments outlive the call)
    tab, side, unigram, meta, tokens = unmanaged(tab), unmanaged(side), unmanaged(unigram), unmanaged(meta), \
        unmanaged(tokens)
    positions, ck, pk, stat, slots = unmanaged(positions), unmanaged(ck), unmanaged(pk), unmanaged(stat), \
        unmanaged(slots)
    cstart = unmanaged(cstart)
    out_i, out_f = unmanaged(out_i), unmanaged(out_f)
    n = positions.shape[0]
    lazy = lo == hi  # single order: n-gram entries only for contexts with 2+ continuations
    lmin = max(lo - 1, 1)  # shortest context length
    worst = worst_new_keys(lo, hi)
    cslot = slots[0]
    pslot = slots[1]
    pfound = slots[2]
    prev_t = np.int64(-2)
    # keys live in a ring of two blocks (ck, pk: (2 BLOCK, hi + 1)): while block k is
    # processed, block k + 1's keys already exist, so the slots of the position AHEAD
    # positions on are prefetched as position i is processed (memory overlaps the work; a
    # whole block's prefetches at once only queued behind each other)
    if start < n:
        segment_keys(tokens, cstart, positions, start, min(start + BLOCK, n), 0, hi, ck, pk)
        for j in range(start, min(start + AHEAD, n)):
            _prefetch_row(tab, ck, pk, positions, cstart, j, start, lo, hi)
    for a in range(start, n, BLOCK):
        b = min(a + BLOCK, n)
        if learn and (meta[0] + worst * (b - a) > meta[3] or meta[1] + worst * (b - a) > meta[4]):
            return NEED_ROOM, a
        base = ((a - start) // BLOCK) % 2 * BLOCK
        if b < n:
            segment_keys(tokens, cstart, positions, b, min(b + BLOCK, n), BLOCK - base, hi, ck, pk)
        for i in range(a, b):
            t = positions[i]
            r = base + i - a
            if i + AHEAD < n:
                _prefetch_row(tab, ck, pk, positions, cstart, i + AHEAD, start, lo, hi)
            contiguous = learn and t == prev_t + 1  # pslot holds t-1's n-gram slots
            pknown = 0
            best_L, M, q = 0, 0, np.int64(-1)
            lim = t - cstart[t]  # the longest context t may use
            if not lazy:  # learning needs the walk too: where the seen-twice contexts end
                best_L, M, q = walk_once(tab, side, tokens, cstart, ck, r, t, lim, lmin, hi, stat, cslot, pslot,
                                         contiguous)
            elif kind != LEARN:
                best_L = walk_lazy(tab, side, ck, r, t, lim, hi, stat, cslot)
            if kind == MIX:
                if best_L > 0:
                    out_i[i] = stat[3, best_L]
                    out_f[i, 0] = stat[0, best_L]
                    out_f[i, 1] = wb_target(tab, side, unigram, meta[2], vocab, np.int64(tokens[t]),
                                            pk, r, lo, best_L, stat, pfound)
                    pknown = best_L + 1
                else:
                    out_i[i] = -1
                    out_f[i, 0] = 0.0
                    out_f[i, 1] = 0.0
            elif kind == TILT:
                h, f = tilt_choice(stat, best_L, lo, tau, const)
                out_i[i] = h
                out_f[i, 0] = f
            if learn:
                x = np.int64(tokens[t])
                unigram[x] += 1
                if lazy:
                    nm, ns = learn_lazy(tab, side, tokens, t, x, lim, hi, ck, pk, r, cslot, kind != LEARN)
                else:
                    nm, ns = learn_once(tab, side, tokens, cstart, t, x, lim, lmin, hi, ck, pk, r, cslot, pslot,
                                        pfound, pknown, M, q)
                meta[0] += nm
                meta[1] += ns
                meta[2] += 1
                prev_t = t
    return OK, n


@njit(cache=True, nogil=True)
def wb_full_kernel(tab, side, unigram, total, vocab, tokens, cstart, t, lo, hi, out):
    """Slow path: the whole Witten-Bell distribution (vocab,) at t; returns (best_L, C)."""
    stat = np.zeros((4, hi + 1), np.int64)
    ck = np.zeros((1, hi + 1), np.uint64)
    lim = t - cstart[t]
    for L in range(1, min(hi - 1, lim) + 1):
        ck[0, L] = seq_key(tokens, t - 1, L)
    slots = np.full((2, hi + 1), -1, np.int64)
    if lo == hi:
        best_L = walk_lazy(tab, side, ck, 0, t, lim, hi, stat, slots[0])
    else:
        best_L, _, _ = walk_once(tab, side, tokens, cstart, ck, 0, t, lim, max(lo - 1, 1), hi, stat, slots[0],
                                 slots[1], False)
    for a in range(vocab):
        out[a] = (unigram[a] + 1.0) / (total + vocab)
    for L in range(max(lo - 1, 1), best_L + 1):
        T = stat[1, L]
        if stat[0, L] == stat[2, L]:  # one continuation so far (or seen once): implied counts
            for a in range(vocab):
                out[a] = ((stat[2, L] if a == stat[3, L] else 0) + out[a]) / (stat[0, L] + 1)
            continue
        for a in range(vocab):
            s = find(tab, seq_key_with(tokens, t, L, a))
            c = 0
            if s >= 0:
                c, _, _ = get_counts(tab, side, s)
            out[a] = (c + T * out[a]) / (stat[0, L] + T)
    return best_L, stat[0, best_L]


@njit(cache=True, nogil=True)
def entropy_kernel(logp, out):
    """Entropy (nats) of each row of a log-distribution; exp(-inf) rows entries count 0."""
    for i in range(logp.shape[0]):
        acc = 0.0
        for a in range(logp.shape[1]):
            v = np.float64(logp[i, a])
            if v > -np.inf:
                acc -= np.exp(v) * v
        out[i] = acc
