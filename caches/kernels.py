"""Numba kernels of the exact n-gram store and of the two legal predictors.

Table layout (why: one random DRAM access per probe is what bounds the speed, so a slot is
16 bytes, the key and all its counts in one cache line, array-of-structs as uint64 (cap, 2)):

    tab[s, 0] = key  (64-bit hash of the whole token sequence; 0 = empty slot)
    tab[s, 1] = packed fields:
        bits  0..15 best_tok  most frequent continuation of the sequence used as a context
        bits 16..31 dist      number of distinct continuations (Witten-Bell's T(h))
        bits 32..41 pair      count of the sequence as an n-gram (ending at a learned position)
        bits 42..51 ctx       count of the sequence as a context (followed by a learned position)
        bits 52..61 bc        count of best_tok after this context
        bit  63     wide      the three counts live in the side table instead (exact, 32 bits)

Counts are exact: when any of the three 10-bit counts would pass 1023 the slot is promoted
to the side table ``side`` (uint64 (scap, 3): key, pair | ctx << 32, bc); only frequent short
n-grams get there, so it stays small and cache-resident. One table holds every length: the
n-gram (h, x) of order n is the same key as the context of order n + 1, so it is stored once.

Keys: the full 64-bit hash is stored and compared, so two n-grams share a slot only if their
64-bit hashes collide (probability ~ m^2 / 2^65 for m stored n-grams: ~1e-5 at m = 1e7, and
the only effect would be merged counts -- still a normalized distribution). Capacity need not
be a power of two: the home slot is ((key >> 32) * cap) >> 32 ("fastrange"), which lets tables
grow by 1.5x instead of 2x (less memory) ; collisions are resolved by linear probing.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit

U64 = np.uint64
SEED = U64(0x243F6A8885A308D3)
GOLD = U64(0x9E3779B97F4A7C15)
M1 = U64(0xBF58476D1CE4E5B9)
M2 = U64(0x94D049BB133111EB)
S30, S27, S31, S32, S16, S42, S52, S63 = (U64(k) for k in (30, 27, 31, 32, 16, 42, 52, 63))
F16 = U64(0xFFFF)
F10 = U64(0x3FF)
F32 = U64(0xFFFFFFFF)
WIDE = U64(1) << S63
SMALL_MAX = 1023


@njit(cache=True, nogil=True, inline="always")
def mix(h, x):
    """One step of the backward sequence hash: splitmix64 of (h xor (x+1)*golden)."""
    z = h ^ ((U64(x) + U64(1)) * GOLD)
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    return z ^ (z >> S31)


@njit(cache=True, nogil=True, inline="always")
def fix_key(h):
    # 0 marks an empty slot; mapping 0 -> 1 merges two sequences with probability 2^-64.
    return h if h != U64(0) else U64(1)


@njit(cache=True, nogil=True)
def seq_key(tokens, end, length):
    """Key of tokens[end-length+1 .. end] (hashed from the end backwards)."""
    h = SEED
    for j in range(length):
        h = mix(h, tokens[end - j])
    return fix_key(h)


@njit(cache=True, nogil=True, inline="always")
def find(tab, key):
    """Slot holding key, or -1 - (first empty slot) when absent."""
    cap = U64(tab.shape[0])
    s = np.int64(((key >> S32) * cap) >> S32)
    n = tab.shape[0]
    while True:
        k = tab[s, 0]
        if k == key:
            return s
        if k == U64(0):
            return -1 - s
        s += 1
        if s == n:
            s = 0


@njit(cache=True, nogil=True, inline="always")
def find_or_insert(tab, key):
    """(slot, 1 if inserted). The caller guarantees a free slot exists."""
    s = find(tab, key)
    if s >= 0:
        return s, 0
    s = -1 - s
    tab[s, 0] = key
    tab[s, 1] = U64(0)
    return s, 1


@njit(cache=True, nogil=True, inline="always")
def get_counts(tab, side, s):
    """(pair, ctx, bc) of slot s, exact."""
    w = tab[s, 1]
    if w & WIDE:
        j = find(side, tab[s, 0])
        v = side[j, 1]
        return np.int64(v & F32), np.int64(v >> S32), np.int64(side[j, 2])
    return np.int64((w >> S32) & F10), np.int64((w >> S42) & F10), np.int64((w >> S52) & F10)


@njit(cache=True, nogil=True, inline="always")
def put_counts(tab, side, s, pair, ctx, bc, dist, tok):
    """Store all fields of slot s; returns 1 if a side-table entry was created."""
    w = tab[s, 1]
    low = U64(tok) | (U64(dist) << S16)
    if w & WIDE:
        j = find(side, tab[s, 0])
        side[j, 1] = U64(pair) | (U64(ctx) << S32)
        side[j, 2] = U64(bc)
        tab[s, 1] = low | WIDE
        return 0
    if pair > SMALL_MAX or ctx > SMALL_MAX or bc > SMALL_MAX:
        j, _ = find_or_insert(side, tab[s, 0])
        side[j, 1] = U64(pair) | (U64(ctx) << S32)
        side[j, 2] = U64(bc)
        tab[s, 1] = low | WIDE
        return 1
    tab[s, 1] = low | (U64(pair) << S32) | (U64(ctx) << S42) | (U64(bc) << S52)
    return 0


@njit(cache=True, nogil=True, inline="always")
def get_low(tab, s):
    """(dist, best_tok) of slot s."""
    w = tab[s, 1]
    return np.int64((w >> S16) & F16), np.int64(w & F16)

BLOCK = 32  # positions whose probes are issued together (memory-level parallelism)


@njit(cache=True, nogil=True, inline="always")
def home(tab, key):
    return np.int64(((key >> S32) * U64(tab.shape[0])) >> S32)


@njit(cache=True, nogil=True)
def block_keys(tab, tokens, positions, a, b, lo, hi, ck, pk, sink, pairs=True):
    """Keys of positions[a:b]: ck[i, L] = tokens[t-L..t-1], pk[i, L] = tokens[t-L+1..t] (0 when
    the sequence would start before position 0), then one independent load of every home
    slot. Why: a probe is a ~200 ns DRAM miss; issued one after another (the probe loop's
    branches depend on the load) they serialize, while these loads have no dependency and
    overlap ~15-fold, so the real probes that follow hit the cache.
    """
    acc = U64(0)
    prev = np.int64(-2)
    for i in range(b - a):
        t = positions[a + i]
        contiguous = t == prev + 1
        prev = t
        h = SEED
        for L in range(1, hi):
            if L > t:
                ck[i, L] = U64(0)
            else:
                h = mix(h, tokens[t - L])
                ck[i, L] = fix_key(h)
                if L >= lo - 1 and not (contiguous and L >= lo):
                    acc ^= tab[home(tab, ck[i, L]), 0]
        if not pairs:  # the tilt needs contexts only: it never hashes the target
            continue
        h = mix(SEED, tokens[t])
        for L in range(2, hi + 1):
            if L - 1 > t:
                pk[i, L] = U64(0)
            else:
                h = mix(h, tokens[t - L + 1])
                pk[i, L] = fix_key(h)
                if L >= lo:
                    acc ^= tab[home(tab, pk[i, L]), 0]
    sink[0] ^= acc  # keeps the loads alive


@njit(cache=True, nogil=True)
def update_kernel(tab, side, unigram, learned, tokens, positions, lo, hi, slots):
    """Learn the n-grams ending at each position (score-first: call after they are scored).

    Returns (new main slots, new side slots), or (-1, t) if position t is out of range or is
    learned twice (nothing is changed then). slots: int64 scratch (2, hi + 1).
    The caller guarantees free space for 2 * (hi - lo + 1) new keys per position.
    """
    n_tok = tokens.shape[0]
    for i in range(positions.shape[0]):  # validate first so a bad call changes nothing
        t = positions[i]
        if t < 0 or t >= n_tok or learned[t] != 0:
            for j in range(i):
                learned[positions[j]] = 0
            return -1, t
        learned[t] = 2
    new_main = 0
    new_side = 0
    prev_t = -2
    cslot = slots[0]
    pslot = slots[1]
    ck = np.zeros((BLOCK, hi + 1), np.uint64)
    pk = np.zeros((BLOCK, hi + 1), np.uint64)
    sink = np.zeros(1, np.uint64)
    n = positions.shape[0]
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        block_keys(tab, tokens, positions, a, b, lo, hi, ck, pk, sink)
        for i in range(a, b):
            t = positions[i]
            r = i - a
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
    return new_main, new_side


@njit(cache=True, nogil=True)
def rehash_kernel(old, new):
    for s in range(old.shape[0]):
        k = old[s, 0]
        if k != U64(0):
            j = -1 - find(new, k)
            for c in range(old.shape[1]):
                new[j, c] = old[s, c]


@njit(cache=True, nogil=True)
def context_walk(tab, side, ckeys, t, lo, hi, cnt, dist, bc, btok):
    """Context statistics of position t for every order, prefix only (tokens[:t]).

    ckeys[L] = key of tokens[t-L..t-1]. Fills cnt/dist/bc/btok[L] for context lengths L
    (order L+1) with count > 0 and returns the longest such L (0 if none). Stops at the first
    unseen context: a longer context can only have been seen where its suffix was.
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
        cnt[L] = c
        dist[L] = d
        bc[L] = b
        btok[L] = tk
        best_L = L
    return best_L


@njit(cache=True, nogil=True, inline="always")
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@njit(cache=True, nogil=True)
def wb_target(tab, side, unigram, total, vocab, a, pkeys, lo, best_L, cnt, dist):
    """Witten-Bell p(a | prefix); pkeys[L+1] = key of (context of length L, a)."""
    p = (unigram[a] + 1.0) / (total + vocab)
    for L in range(max(lo - 1, 1), best_L + 1):
        s = find(tab, pkeys[L + 1])
        c = 0
        if s >= 0:
            c, _, _ = get_counts(tab, side, s)
        T = dist[L]
        p = (c + T * p) / (cnt[L] + T)
    return p


@njit(cache=True, nogil=True)
def mix_weight(entropy, best_L, cnt, wmax, h0, slope, c0):
    if best_L == 0:
        return 0.0
    C = cnt[best_L]
    return wmax * sigmoid(slope * (entropy - h0)) * (C / (C + c0))


@njit(cache=True, nogil=True)
def score_mix_kernel(tab, side, unigram, total, vocab, tokens, positions, lp_target, entropy,
                     lo, hi, wmax, h0, slope, c0, out):
    """out[i] = log((1-w) p_model(x_t) + w p_WB(x_t)), t = positions[i]. Reads the store only
    (returns -1, or the first position outside the stream)."""
    cnt = np.zeros(hi + 1, np.int64)
    dist = np.zeros(hi + 1, np.int64)
    bc = np.zeros(hi + 1, np.int64)
    btok = np.zeros(hi + 1, np.int64)
    ck = np.zeros((BLOCK, hi + 1), np.uint64)
    pk = np.zeros((BLOCK, hi + 1), np.uint64)
    sink = np.zeros(1, np.uint64)
    n = positions.shape[0]
    for i in range(n):
        if positions[i] < 0 or positions[i] >= tokens.shape[0]:
            return positions[i]
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        block_keys(tab, tokens, positions, a, b, lo, hi, ck, pk, sink)
        for i in range(a, b):
            t = positions[i]
            best_L = context_walk(tab, side, ck[i - a], t, lo, hi, cnt, dist, bc, btok)
            w = mix_weight(entropy[i], best_L, cnt, wmax, h0, slope, c0)
            if w == 0.0:
                out[i] = lp_target[i]
                continue
            pn = wb_target(tab, side, unigram, total, vocab, np.int64(tokens[t]), pk[i - a], lo,
                           best_L, cnt, dist)
            out[i] = np.log((1.0 - w) * np.exp(lp_target[i]) + w * pn)
    return -1


@njit(cache=True, nogil=True)
def wb_full_kernel(tab, side, unigram, total, vocab, tokens, t, lo, hi, out):
    """Slow path: the whole Witten-Bell distribution (vocab,) at t; returns (best_L, C)."""
    cnt = np.zeros(hi + 1, np.int64)
    dist = np.zeros(hi + 1, np.int64)
    bc = np.zeros(hi + 1, np.int64)
    btok = np.zeros(hi + 1, np.int64)
    ckeys = np.zeros(hi + 1, np.uint64)
    for L in range(1, min(hi - 1, t) + 1):
        ckeys[L] = seq_key(tokens, t - 1, L)
    best_L = context_walk(tab, side, ckeys, t, lo, hi, cnt, dist, bc, btok)
    for a in range(vocab):
        out[a] = (unigram[a] + 1.0) / (total + vocab)
    for L in range(max(lo - 1, 1), best_L + 1):
        T = dist[L]
        for a in range(vocab):
            s = find(tab, seq_key_with(tokens, t, L, a))
            c = 0
            if s >= 0:
                c, _, _ = get_counts(tab, side, s)
            out[a] = (c + T * out[a]) / (cnt[L] + T)
    return best_L, cnt[best_L]


@njit(cache=True, nogil=True)
def seq_key_with(tokens, t, L, a):
    """Key of (tokens[t-L .. t-1], a): the n-gram whose last token is a."""
    h = mix(SEED, a)
    for j in range(1, L + 1):
        h = mix(h, tokens[t - j])
    return fix_key(h)


@njit(cache=True, nogil=True)
def tilt_hint_kernel(tab, side, tokens, positions, entropy, lo, hi, beta, h0, slope,
                     hint, strength):
    """Hint token (argmax continuation of the longest seen context) and tilt strength."""
    cnt = np.zeros(hi + 1, np.int64)
    dist = np.zeros(hi + 1, np.int64)
    bc = np.zeros(hi + 1, np.int64)
    btok = np.zeros(hi + 1, np.int64)
    ck = np.zeros((BLOCK, hi + 1), np.uint64)
    pk = np.zeros((BLOCK, hi + 1), np.uint64)
    sink = np.zeros(1, np.uint64)
    n = positions.shape[0]
    for i in range(n):
        if positions[i] < 0 or positions[i] >= tokens.shape[0]:
            return positions[i]
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        block_keys(tab, tokens, positions, a, b, lo, hi, ck, pk, sink, False)
        for i in range(a, b):
            best_L = context_walk(tab, side, ck[i - a], positions[i], lo, hi, cnt, dist, bc, btok)
            if best_L == 0:
                hint[i] = -1
                strength[i] = 0.0
                continue
            hint[i] = btok[best_L]
            strength[i] = beta * sigmoid(slope * (entropy[i] - h0)) * (bc[best_L] / (cnt[best_L] + 1.0))
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


_COMPILE_SECONDS: float | None = None


def warmup() -> float:
    """Compile (or load from the on-disk cache) every kernel once; returns the seconds taken.

    The first call in a fresh checkout is the Numba compile time; later processes load the
    cache (``cache=True``) and take well under a second. The value is memoised.
    """
    global _COMPILE_SECONDS
    if _COMPILE_SECONDS is not None:
        return _COMPILE_SECONDS
    t0 = time.perf_counter()
    tab = np.zeros((64, 2), np.uint64)
    side = np.zeros((16, 3), np.uint64)
    uni = np.zeros(8, np.int64)
    learned = np.zeros(8, np.uint8)
    toks = np.arange(8, dtype=np.uint16) % 3
    pos = np.arange(8, dtype=np.int64)
    update_kernel(tab, side, uni, learned, toks, pos, 2, 3, np.zeros((2, 4), np.int64))
    tab2 = np.zeros((96, 2), np.uint64)
    rehash_kernel(tab, tab2)
    lp = np.full(8, -1.0)
    ent = np.ones(8)
    out = np.zeros(8)
    score_mix_kernel(tab, side, uni, 8, 8, toks, pos, lp, ent, 2, 3, 0.3, 1.0, 1.0, 1.0, out)
    wb_full_kernel(tab, side, uni, 8, 8, toks, 5, 2, 3, np.zeros(8))
    tilt_hint_kernel(tab, side, toks, pos, ent, 2, 3, 1.0, 1.0, 1.0,
                     np.zeros(8, np.int64), np.zeros(8))
    entropy_kernel(np.zeros((2, 8), np.float32), out)
    entropy_kernel(np.zeros((2, 8), np.float64), out)
    _COMPILE_SECONDS = time.perf_counter() - t0
    return _COMPILE_SECONDS
