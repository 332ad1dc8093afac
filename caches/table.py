"""The exact count table: slot layout, hashing, probing, prefetching (Numba primitives).

Layout (why: one random DRAM access per probe is what bounds the speed, so a slot is 16
bytes, the key and all its counts in one cache line, array-of-structs as uint64 (cap, 2)):

    tab[s, 0] = key  (64-bit hash of the whole token sequence; 0 = empty slot)
    tab[s, 1] = packed fields:
        bits  0..15 best_tok  most frequent continuation of the sequence used as a context
        bits 16..31 dist      number of distinct continuations (Witten-Bell's T(h))
        bits 32..41 pair      count of the sequence as an n-gram (ending at a learned position)
        bits 42..51 ctx       count of the sequence as a context (followed by a learned position)
        bits 52..61 bc        count of best_tok after this context
        bit  63     wide      the three counts live in the side table instead (exact, 32 bits)
    With several orders, a context whose ctx count is 1 keeps in bits 0..31 the learned
    position q that followed it instead of best_tok and dist (both implied by q: see
    ``seen_once``, which also says which sequences are stored at all).

Counts are exact: when any of the three 10-bit counts would pass 1023 the slot is promoted
to the side table ``side`` (uint64 (scap, 3): key, pair | ctx << 32, bc); only frequent short
n-grams get there, so it stays small and cache-resident. One table holds every length: the
n-gram (h, x) of order n is the same key as the context of order n + 1, so it is stored once.

Keys: the full 64-bit hash is stored and compared, so two n-grams share a slot only if their
64-bit hashes collide (probability ~ m^2 / 2^65 for m stored n-grams: ~1e-5 at m = 1e7, and
the only effect would be merged counts -- still a normalized distribution). Capacity need not
be a power of two: the home bucket is ((key >> 32) * (cap / 4)) >> 32 ("fastrange"), which lets
tables grow by 1.5x instead of 2x (less memory); collisions are resolved by linear probing.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

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
def home(tab, key):
    """First slot of the key's 4-slot bucket. Why buckets: ``table_zeros`` aligns slot 0 to a
    64-byte line, so a probe starting at a bucket reads one line (the one prefetched) unless
    all 4 slots are taken; a probe starting mid-line crossed into an unprefetched line ~1/3
    of the time at half load, each crossing a ~100 ns stall."""
    return np.int64(((key >> S32) * U64(tab.shape[0] >> 2)) >> S32) << 2


@njit(cache=True, nogil=True, inline="always")
def find(tab, key):
    """Slot holding key, or -1 - (first empty slot) when absent: linear probing, one 4-slot
    bucket at a time. Why whole buckets: the four keys are compared at once and the answer
    picked without a branch (tzcnt and a select), so a probe costs one predictable branch
    per bucket instead of a data-dependent exit per slot (with the table in L2: 11 ns per
    lookup against 17 slot by slot, a micro-benchmark of random keys). Same slots as probing slot by slot: without
    deletions no key sits after an empty slot. The capacity is a multiple of 4."""
    s = home(tab, key)
    n = tab.shape[0]
    while True:
        k0, k1, k2, k3 = tab[s, 0], tab[s + 1, 0], tab[s + 2, 0], tab[s + 3, 0]
        m = U64(k0 == key) | (U64(k1 == key) << U64(1)) | (U64(k2 == key) << U64(2)) | (U64(k3 == key) << U64(3))
        e = U64(k0 == U64(0)) | (U64(k1 == U64(0)) << U64(1)) | (U64(k2 == U64(0)) << U64(2)) \
            | (U64(k3 == U64(0)) << U64(3))
        c = m | e
        if c != U64(0):
            i = np.int64(trailing_zeros(c))
            slot = s + i
            return slot if (m >> U64(i)) & U64(1) else -1 - slot
        s += 4
        if s == n:
            s = 0


@njit(cache=True, nogil=True, inline="always")
def find_or_insert(tab, key):
    """(slot, 1 if inserted). The caller guarantees a free slot exists. Branch-free after
    the probe (found or not is a coin flip on real text, a misprediction each time): an
    empty slot's packed word is already 0, so inserting only writes the key, and writing
    the key of a found slot stores what is there."""
    s = find(tab, key)
    slot = s ^ (s >> 63)  # s, or the empty slot -1 - s
    tab[slot, 0] = key
    return slot, np.int64(s < 0)


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
def get_ctx(tab, side, s):
    """(ctx count, distinct, best count, best token) of slot s from one load (inline counts)."""
    w = tab[s, 1]
    if w & WIDE:
        _, c, b = get_counts(tab, side, s)
        return c, np.int64((w >> S16) & F16), b, np.int64(w & F16)
    return np.int64((w >> S42) & F10), np.int64((w >> S16) & F16), np.int64((w >> S52) & F10), np.int64(w & F16)


@njit(cache=True, nogil=True, inline="always")
def bump_pair(tab, side, s):
    """pair count of slot s += 1; returns the count before. One load and one store on the
    packed word in the common case (inline and below the 10-bit limit)."""
    w = tab[s, 1]
    p = np.int64((w >> S32) & F10)
    if (w & WIDE) == U64(0) and p < SMALL_MAX:
        tab[s, 1] = w + (U64(1) << S32)
        return p, 0
    p, c, bb = get_counts(tab, side, s)
    d, tk = get_low(tab, s)
    return p, put_counts(tab, side, s, p + 1, c, bb, d, tk)


@njit(cache=True, nogil=True, inline="always")
def bump_ctx(tab, side, s, p, x):
    """Slot s as a context was followed by x, whose n-gram count was p before: ctx count
    += 1, distinct += 1 if p == 0, best = x if p + 1 > best count (strict: ties keep the
    first). Returns new side entries."""
    w = tab[s, 1]
    cc = np.int64((w >> S42) & F10)
    if (w & WIDE) == U64(0) and cc < SMALL_MAX and p < SMALL_MAX:
        w += U64(1) << S42
        if p == 0:
            w += U64(1) << S16
        if p + 1 > np.int64((w >> S52) & F10):
            w = (w & ~((F10 << S52) | F16)) | (U64(p + 1) << S52) | U64(x)
        tab[s, 1] = w
        return 0
    cp, cc, cb = get_counts(tab, side, s)
    cd, ct = get_low(tab, s)
    if p == 0:
        cd += 1
    if p + 1 > cb:
        cb = p + 1
        ct = x
    return put_counts(tab, side, s, cp, cc + 1, cb, cd, ct)


@njit(cache=True, nogil=True, inline="always")
def get_low(tab, s):
    """(dist, best_tok) of slot s."""
    w = tab[s, 1]
    return np.int64((w >> S16) & F16), np.int64(w & F16)


@njit(cache=True, nogil=True, inline="always")
def prefetch_home(tab, key):
    """Prefetch the key's bucket (one line). Not the next bucket too: the fill buffers are
    what runs out, and a second line per key, needed only when the bucket is full, made the
    pass ~10% slower."""
    prefetch_slot(tab, home(tab, key))


@intrinsic
def prefetch_slot(typingctx, tab, s):
    """Software prefetch of the cache line of tab[s, 0]. Why not a plain load: a load that
    misses holds its reorder-buffer entry until the line arrives (~100 ns), so a few hundred
    of them stall the core; a prefetch retires at once and only occupies a fill buffer."""
    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx, zero])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()
    return types.void(tab, s), codegen


@intrinsic
def unmanaged(typingctx, arr):
    """The same array without its reference count (NRT meminfo and parent set to NULL).

    Why: Numba increfs and decrefs an array's meminfo each time a view or an inlined call
    binds it, and each is a ``lock``-prefixed add on one shared word: a full fence on x86,
    which drains the store buffer and so stops the prefetched loads of later positions from
    overlapping. In the hot loop they were half the time. The caller keeps the real arrays
    alive for the whole call, so the views need no count of their own."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        dst = context.make_array(sig.return_type)(context, builder)
        for name in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(dst, name, getattr(src, name))
        dst.meminfo = cgutils.get_null_value(dst.meminfo.type)
        dst.parent = cgutils.get_null_value(dst.parent.type)
        return dst._getvalue()
    return arr(arr), codegen


@njit(cache=True, nogil=True)
def segment_keys(tokens, cstart, positions, a, b, r0, hi, ck, pk):
    """Keys of positions[a:b] into rows r0.. of ck / pk (no table access).

    ck[r, L] = key of tokens[t-L..t-1] (contexts, L < hi), pk[r, L] = key of tokens[t-L+1..t]
    (n-grams, L <= hi), for the lengths t may use: a context of t reaches back to cstart[t] at
    most (0: the stream's start), so L <= lim = t - cstart[t] (0 past it when hashed afresh;
    readers never look past lim). Why this shape: pk of t at length L *is* ck of t+1 at
    length L, so a run of consecutive positions hashes each suffix once (hi mixes per
    position, not 2 hi - 1); t+1's limit is at most t's + 1, so what it reuses is valid. Row
    r0 - 1 must hold the keys of positions[a - 1] unless r0 == 0 (then the first row is
    hashed in full).
    """
    prev = np.int64(-2) if a == 0 or r0 == 0 else positions[a - 1]
    for i in range(a, b):
        r = r0 + i - a
        t = positions[i]
        lim = t - cstart[t]
        if t == prev + 1:
            for L in range(1, hi):
                ck[r, L] = pk[r - 1, L]
        else:
            h = SEED
            for L in range(1, hi):
                if L > lim:
                    ck[r, L] = U64(0)
                else:
                    h = mix(h, tokens[t - L])
                    ck[r, L] = fix_key(h)
        prev = t
        h = SEED
        for L in range(1, hi + 1):
            if L - 1 > lim:
                pk[r, L] = U64(0)
            else:
                h = mix(h, tokens[t - L + 1])
                pk[r, L] = fix_key(h)


@njit(cache=True, nogil=True, inline="always")
def prefetch_keys(tab, ck, pk, r, lim, fresh, lo, top):
    """Prefetch the home buckets of the slots a position (keys in row r, contexts up to lim
    long) is likely to touch, lengths max(lo - 1, 1)..top: its contexts when ``fresh`` (else
    they are the previous position's n-grams, already asked for) and its n-grams."""
    if fresh:
        for L in range(max(lo - 1, 1), min(top - 1, lim) + 1):
            prefetch_home(tab, ck[r, L])
    for L in range(max(lo - 1, 1), min(top, lim + 1) + 1):
        prefetch_home(tab, pk[r, L])


def table_zeros(rows: int, cols: int) -> np.ndarray:
    """Zeroed uint64 table of at least ``rows`` rows, a multiple of 4 (``find`` reads whole
    buckets), whose slot 0 starts a 64-byte cache line (see home)."""
    rows = -(-rows // 4) * 4  # whole 4-slot buckets (find)
    buf = np.zeros(rows * cols + 8, np.uint64)
    off = (-buf.ctypes.data % 64) // 8
    return buf[off:off + rows * cols].reshape(rows, cols)


@njit(cache=True, nogil=True)
def rehash_kernel(old, new):
    for s in range(old.shape[0]):
        k = old[s, 0]
        if k != U64(0):
            j = -1 - find(new, k)
            for c in range(old.shape[1]):
                new[j, c] = old[s, c]
