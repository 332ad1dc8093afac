"""Numba kernels of the store's update and of the two legal predictors (primitives: ``table``).

Per segment the engine calls score, then update, on the same positions. Score computes every
key of the segment once (``segment_keys``: contexts and n-grams of all orders, then a
prefetch of every slot they will touch) and leaves them in the store's key memo; update
reuses them when called with the same positions. The memo is a pure function of the bound
token stream, not learned state: score still reads the counts only.
"""
from __future__ import annotations


import numpy as np
from numba import njit

from .table import (find, find_or_insert, fix_key, get_counts, get_low, mix, put_counts,
                    rehash_kernel, segment_keys, seq_key, SEED, table_zeros)

__all__ = ["find", "get_counts", "get_low", "rehash_kernel", "seq_key", "table_zeros"]

BLOCK = 128  # positions whose keys are computed and prefetched together (~1400 lines, in L2)
OK, BAD_POSITION, NEED_ROOM = 0, -1, -2


@njit(cache=True, nogil=True, inline="always")
def memo_matches(memo, positions):
    n = positions.shape[0]
    if memo[0] != n or n == 0:
        return False
    for i in range(n):
        if memo[1 + i] != positions[i]:
            return False
    return True


@njit(cache=True, nogil=True)
def update_kernel(tab, side, unigram, learned, tokens, positions, lo, hi, slots, meta, ck, pk,
                  memo):
    """Learn the n-grams ending at each position (score-first: call after they are scored).

    meta = [entries, side entries, learned tokens, entry limit, side limit] (int64, updated
    here). Returns (OK, 0), (BAD_POSITION, t) if position t is out of range or is learned twice,
    or (NEED_ROOM, 0) if up to 2 (hi - lo + 1) new keys per position might not fit under the
    load limits; nothing is changed in the last two cases. slots: int64 scratch (2, hi + 1).
    """
    n = positions.shape[0]
    worst = 2 * (hi - lo + 1) * n
    if meta[0] + worst > meta[3] or meta[1] + worst > meta[4]:
        return NEED_ROOM, 0
    n_tok = tokens.shape[0]
    for i in range(n):  # validate first so a bad call changes nothing
        t = positions[i]
        if t < 0 or t >= n_tok or learned[t] != 0:
            for j in range(i):
                learned[positions[j]] = 0
            return BAD_POSITION, t
        learned[t] = 2
    reuse = memo_matches(memo, positions)
    memo[0] = 0
    whole = n <= ck.shape[0]
    new_main = 0
    new_side = 0
    prev_t = -2
    cslot = slots[0]
    pslot = slots[1]
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        r0 = a if whole else 0
        if not reuse:
            segment_keys(tab, tokens, positions, a, b, r0, lo, hi, ck, pk, True)
        for i in range(a, b):
            t = positions[i]
            r = r0 + i - a
            learned[t] = 1
            x = np.int64(tokens[t])
            unigram[x] += 1
            contiguous = t == prev_t + 1
            # ctx roles tokens[t-L..t-1], L in [lo-1, hi-1]; for a position that follows the
            # previous one these are that position's pair slots (same keys, no probe).
            for L in range(max(lo - 1, 1), min(hi - 1, t) + 1):
                if contiguous and L >= lo:
                    cslot[L] = pslot[L]
                else:
                    s, ins = find_or_insert(tab, ck[r, L])
                    new_main += ins
                    cslot[L] = s
            # pair roles tokens[t-L+1..t], L in [lo, hi], whose context slot is cslot[L-1].
            for L in range(lo, min(hi, t + 1) + 1):
                cs = cslot[L - 1]
                ps, ins = find_or_insert(tab, pk[r, L])
                new_main += ins
                p, c, bb = get_counts(tab, side, ps)
                d, tk = get_low(tab, ps)
                new_side += put_counts(tab, side, ps, p + 1, c, bb, d, tk)
                cp, cc, cb = get_counts(tab, side, cs)
                cd, ct = get_low(tab, cs)
                cc += 1
                if p == 0:
                    cd += 1
                if p + 1 > cb:  # strict: ties keep the continuation that got there first
                    cb = p + 1
                    ct = x
                new_side += put_counts(tab, side, cs, cp, cc, cb, cd, ct)
                pslot[L] = ps
            prev_t = t
    meta[0] += new_main
    meta[1] += new_side
    meta[2] += n
    return OK, 0


@njit(cache=True, nogil=True)
def context_walk(tab, side, ckeys, t, lo, hi, stat):
    """Context statistics of position t for every order, prefix only (tokens[:t]).

    ckeys[L] = key of tokens[t-L..t-1]. Fills stat[0..3, L] = count, distinct, best count,
    best token for context lengths L (order L+1) with count > 0 and returns the longest such L
    (0 if none). Stops at the first unseen context: a longer context can only have been seen
    where its suffix was (this prunes most probes on real text).
    """
    best_L = 0
    for L in range(max(lo - 1, 1), min(hi - 1, t) + 1):
        s = find(tab, ckeys[L])
        if s < 0:
            break
        p, c, b = get_counts(tab, side, s)
        if c == 0:
            break
        d, tk = get_low(tab, s)
        stat[0, L] = c
        stat[1, L] = d
        stat[2, L] = b
        stat[3, L] = tk
        best_L = L
    return best_L


@njit(cache=True, nogil=True, inline="always")
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@njit(cache=True, nogil=True)
def wb_target(tab, side, unigram, total, vocab, a, pkeys, lo, best_L, stat):
    """Witten-Bell p(a | prefix); pkeys[L+1] = key of (context of length L, a)."""
    p = (unigram[a] + 1.0) / (total + vocab)
    for L in range(max(lo - 1, 1), best_L + 1):
        s = find(tab, pkeys[L + 1])
        c = 0
        if s >= 0:
            c, _, _ = get_counts(tab, side, s)
        T = stat[1, L]
        p = (c + T * p) / (stat[0, L] + T)
    return p


@njit(cache=True, nogil=True, inline="always")
def mix_weight(entropy, best_L, C, wmax, h0, slope, c0):
    if best_L == 0:
        return 0.0
    return wmax * sigmoid(slope * (entropy - h0)) * (C / (C + c0))


@njit(cache=True, nogil=True)
def score_mix_kernel(tab, side, unigram, meta, vocab, tokens, positions, model_logp, entropy,
                     lo, hi, wmax, h0, slope, c0, ck, pk, memo, stat, out):
    """out[i] = log((1-w) p_model(x_t) + w p_WB(x_t)), t = positions[i], p_model(x_t) read from
    model_logp[i, x_t]. Reads the counts only; writes out, the key memo and the scratch stat.
    Returns -1, or the first position outside the stream (then nothing is written)."""
    n = positions.shape[0]
    for i in range(n):
        if positions[i] < 0 or positions[i] >= tokens.shape[0]:
            return positions[i]
    memo[0] = 0  # the rows are about to be overwritten
    whole = n <= ck.shape[0]
    total = meta[2]
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        r0 = a if whole else 0
        segment_keys(tab, tokens, positions, a, b, r0, lo, hi, ck, pk, True)
        for i in range(a, b):
            t = positions[i]
            r = r0 + i - a
            x = np.int64(tokens[t])
            lp = np.float64(model_logp[i, x])
            best_L = context_walk(tab, side, ck[r], t, lo, hi, stat)
            w = mix_weight(entropy[i], best_L, stat[0, best_L], wmax, h0, slope, c0)
            if w == 0.0:
                out[i] = lp
                continue
            pn = wb_target(tab, side, unigram, total, vocab, x, pk[r], lo, best_L, stat)
            out[i] = np.log((1.0 - w) * np.exp(lp) + w * pn)
    if whole:  # update(positions) may reuse these keys
        for i in range(n):
            memo[1 + i] = positions[i]
        memo[0] = n
    return -1


@njit(cache=True, nogil=True)
def seq_key_with(tokens, t, L, a):
    """Key of (tokens[t-L .. t-1], a): the n-gram whose last token is a."""
    h = mix(SEED, a)
    for j in range(1, L + 1):
        h = mix(h, tokens[t - j])
    return fix_key(h)


@njit(cache=True, nogil=True)
def wb_full_kernel(tab, side, unigram, total, vocab, tokens, t, lo, hi, out):
    """Slow path: the whole Witten-Bell distribution (vocab,) at t; returns (best_L, C)."""
    stat = np.zeros((4, hi + 1), np.int64)
    ckeys = np.zeros(hi + 1, np.uint64)
    for L in range(1, min(hi - 1, t) + 1):
        ckeys[L] = seq_key(tokens, t - 1, L)
    best_L = context_walk(tab, side, ckeys, t, lo, hi, stat)
    for a in range(vocab):
        out[a] = (unigram[a] + 1.0) / (total + vocab)
    for L in range(max(lo - 1, 1), best_L + 1):
        T = stat[1, L]
        for a in range(vocab):
            s = find(tab, seq_key_with(tokens, t, L, a))
            c = 0
            if s >= 0:
                c, _, _ = get_counts(tab, side, s)
            out[a] = (c + T * out[a]) / (stat[0, L] + T)
    return best_L, stat[0, best_L]


@njit(cache=True, nogil=True)
def tilt_hint_kernel(tab, side, tokens, positions, entropy, lo, hi, beta, h0, slope,
                     ck, pk, memo, stat, hint, strength):
    """Hint token (argmax continuation of the longest seen context) and tilt strength."""
    n = positions.shape[0]
    for i in range(n):
        if positions[i] < 0 or positions[i] >= tokens.shape[0]:
            return positions[i]
    memo[0] = 0  # contexts only: update must hash the n-grams itself
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        segment_keys(tab, tokens, positions, a, b, 0, lo, hi, ck, pk, False)
        for i in range(a, b):
            best_L = context_walk(tab, side, ck[i - a], positions[i], lo, hi, stat)
            if best_L == 0:
                hint[i] = -1
                strength[i] = 0.0
                continue
            hint[i] = stat[3, best_L]
            strength[i] = beta * sigmoid(slope * (entropy[i] - h0)) * (stat[2, best_L] / (stat[0, best_L] + 1.0))
    return -1


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
