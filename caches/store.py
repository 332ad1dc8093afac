"""Exact multi-order n-gram count store (score-first: it learns only through ``update``).

Orders lo..hi (order n = n-1 context tokens + the next token). For every stored sequence the
table keeps its count as an n-gram, its count as a context, the number of distinct
continuations (Witten-Bell's T(h), +1 when a (ctx, next) count goes 0 -> 1) and the argmax
continuation with its count (the tilt's hint, O(1)). See ``table`` for the slot layout. With
several orders only contexts seen twice or more are stored in full; a context seen once is
stored by the position that followed it, and longer ones not at all (``seen_once``). A single
order stores its n-grams lazily (``kernels.learn_lazy``). Tables grow (rehash at ``max_load``)
and never drop an entry, so every count is exact.

Sizing: with ``capacity=None`` (the mixer's default) ``bind`` sizes the table from the stream
length: tokens x keys per token / max_load (+5%). Several orders store a context seen once by
where it was seen (``seen_once``): measured on the shared FineWeb stream (sp1024, permuted
repeats, 2M and 10M tokens) orders 2-6 take 1.55 keys per token, 2-11 2.0, 2-16 2.15, so
SEEN_ONCE_KEYS = 2.2 (~44 B per token at max_load 0.8). A single order stores n-grams lazily
(kernels.learn_lazy): ~1 key, ~1.4 slots (23 B) per token, from NOVEL (the fraction of
positions where a sequence of length L is new, the larger of sp1024 and sp8192). Why presize:
growing from a small table rehashes every key ~2x and faults in ~3x the final memory, which
cost more CPU than all the scoring. A stream with more keys still grows (x1.5); an explicit
capacity keeps the grow path.
"""
from __future__ import annotations

import time

import numpy as np

from . import kernels as K
from .errors import CacheInputError
from .seen_once import seen_at

MAX_VOCAB = 65535  # tokens and distinct-continuation counts are stored in 16 bits
SEEN_ONCE_KEYS = 2.2  # keys per token, several orders (see Sizing)
# fraction of positions where a sequence of length L (index) is new, FineWeb (see Sizing)
NOVEL = (0.0, 0.02, 0.38, 0.71, 0.84, 0.90, 0.93, 0.95, 0.96, 0.97, 0.976, 0.981, 0.984, 0.986,
         0.988, 0.989, 0.991)


def presize_slots(n_tokens: int, lo: int, hi: int, max_load: float) -> int:
    """Slots for a stream of n_tokens at orders lo..hi (see Sizing)."""
    if lo == hi:  # single order: contexts, and n-grams only of contexts with 2+ continuations
        keys = n_tokens * (NOVEL[hi - 1] + 0.1)
    else:  # contexts seen twice or more, their n-grams, contexts seen once at the boundary
        keys = n_tokens * SEEN_ONCE_KEYS
    return max(1 << 16, int(1.05 * keys / max_load))


class NgramStore:
    """Exact counts of orders lo..hi over a bound token stream."""

    def __init__(self, vocab_size: int, lo: int = 2, hi: int = 11, capacity: int | None = None,
                 max_load: float = 0.8, growth: float = 1.5) -> None:
        if not 2 <= vocab_size <= MAX_VOCAB:
            raise CacheInputError(f"vocab_size {vocab_size}: the n-gram store supports 2..{MAX_VOCAB}")
        self.vocab_size = int(vocab_size)
        self.lo, self.hi = int(lo), int(hi)
        self.max_load, self.growth = float(max_load), float(growth)
        self.initial_capacity = None if capacity is None else max(int(capacity), 16)
        self.tokens = np.zeros(0, np.uint16)
        self.context_start = np.zeros(0, np.int64)
        # scratch of the kernels, allocated once (no per-call allocation): one block's keys
        # (ck contexts, pk n-grams), the learn slot rows, context statistics.
        self.ck = np.zeros((2 * K.BLOCK, self.hi + 1), np.uint64)
        self.pk = np.zeros((2 * K.BLOCK, self.hi + 1), np.uint64)
        self.stat = np.zeros((4, self.hi + 1), np.int64)
        self._slots = np.zeros((3, self.hi + 1), np.int64)
        self.reset()

    def reset(self) -> None:
        cap = self.initial_capacity
        if cap is None:
            cap = presize_slots(self.tokens.shape[0], self.lo, self.hi, self.max_load)
        self.tab = K.table_zeros(cap, 2)
        # room for one block's worst case, so that the first call does not grow it (the same
        # memory whatever the call sizes)
        side = 1024
        while self.max_load * side < int(K.worst_new_keys(self.lo, self.hi)) * K.BLOCK:
            side *= 2
        self.side = K.table_zeros(side, 3)
        # [main entries, side entries, learned tokens, main limit, side limit]: the kernels
        # keep it current, so a call needs no Python-side bookkeeping.
        self.meta = np.zeros(5, np.int64)
        self._set_limits()
        self.unigram = np.zeros(self.vocab_size, np.int64)
        self.learned = np.zeros(self.tokens.shape[0], np.uint8)

    n_main = property(lambda self: int(self.meta[0]))
    n_side = property(lambda self: int(self.meta[1]))
    total = property(lambda self: int(self.meta[2]))

    def _set_limits(self) -> None:
        self.meta[3] = int(self.max_load * self.tab.shape[0])
        self.meta[4] = int(self.max_load * self.side.shape[0])

    def bind(self, tokens: np.ndarray, context_start: np.ndarray | None = None) -> None:
        """Bind the evaluation stream and start from an empty store. ``context_start``
        (int64, one per token): the first position a context of position t may reach back to
        (default 0: contexts run across documents, legal when documents are scored in stream
        order). Where documents may be scored in another order, pass each target's document
        start: a context then never reads a token of another document, which may not be
        scored yet (tokens before it in its own document always are)."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise CacheInputError(f"tokens must be 1-D, got shape {arr.shape}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size):
            raise CacheInputError(f"token ids must lie in [0, {self.vocab_size})")
        if arr.size >= 1 << 32:
            raise CacheInputError("streams of 2^32 tokens or more overflow the 32-bit counts")
        self.tokens = np.ascontiguousarray(arr, dtype=np.uint16)  # no copy if already uint16
        if context_start is None:
            self.context_start = np.zeros(arr.size, np.int64)
        else:
            cs = np.ascontiguousarray(context_start, dtype=np.int64)
            pos = np.arange(arr.size)
            if cs.shape != arr.shape or bool(((cs < 0) | (cs > pos)).any()) or bool((np.diff(cs) < 0).any()):
                raise CacheInputError("context_start must give, per token, a position 0 <= start <= t, "
                                      "never decreasing")
            self.context_start = cs
        self.reset()

    # -- growth ---------------------------------------------------------------------------
    def _grow(self, n_positions: int) -> None:
        """Make room for the most new keys n_positions can take (the kernel's own bound)."""
        worst = int(K.worst_new_keys(self.lo, self.hi)) * n_positions
        cap = self.tab.shape[0]
        if self.n_main + worst > self.max_load * cap:
            new_cap = cap
            while self.n_main + worst > self.max_load * new_cap:
                new_cap = int(new_cap * self.growth) + 1
            new = K.table_zeros(new_cap, 2)
            K.rehash_kernel(self.tab, new)
            self.tab = new
        scap = self.side.shape[0]
        if self.n_side + worst > self.max_load * scap:
            new_cap = scap
            while self.n_side + worst > self.max_load * new_cap:
                new_cap = new_cap * 2
            new = K.table_zeros(new_cap, 3)
            K.rehash_kernel(self.side, new)
            self.side = new
        self._set_limits()

    def run(self, positions: np.ndarray, kind: int, tau: float = 0.0, const: bool = False,
            learn: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """One pass over ``positions`` in order: for each, the aux of ``kind`` (kernels.MIX,
        TILT or LEARN) from the current counts, then (if ``learn``) learn it. Returns
        (out_i int64 (n,), out_f float64 (n, 2)); see ``kernels.advance_kernel``."""
        pos = positions
        if not (type(pos) is np.ndarray and pos.dtype == np.int64 and pos.flags.c_contiguous):
            pos = np.ascontiguousarray(positions, dtype=np.int64)
        n = pos.shape[0]
        out_i = np.empty(n, np.int64)
        out_f = np.empty((n, 2), np.float64)
        if learn:
            bad = K.claim_kernel(self.learned, self.tokens.shape[0], pos)
            if bad != -1:
                raise CacheInputError(f"position {bad} is outside [0, {self.tokens.shape[0]}), repeated "
                                      "or already learned (each position is learned once)")
        elif n and (pos.min() < 0 or pos.max() >= self.tokens.shape[0]):
            raise CacheInputError(f"positions must lie in [0, {self.tokens.shape[0]})")
        start = 0
        while True:
            code, start = K.advance_kernel(self.tab, self.side, self.unigram, self.meta, self.vocab_size,
                                           self.tokens, self.context_start, pos, start, self.lo, self.hi, kind,
                                           tau, const, learn, self.ck, self.pk, self.stat, self._slots, out_i, out_f)
            if code != K.NEED_ROOM:
                return out_i, out_f
            self._grow(K.BLOCK)

    def update(self, positions: np.ndarray) -> None:
        """Learn the n-grams ending at ``positions``, in that order, each position at most once."""
        self.run(positions, K.LEARN)

    # -- inspection (tests, reports) --------------------------------------------------------
    def lookup(self, seq) -> tuple[int, int, int, int, int]:
        """(pair count, ctx count, distinct continuations, best token, best count) of a sequence."""
        arr = np.asarray(seq, dtype=np.uint16)
        m = arr.shape[0]
        if self.lo == self.hi == m:  # single order: an n-gram's count may be implied
            _, c, _, tk, b = self.lookup(arr[:-1])
            if c and c == b:
                return (b if int(arr[-1]) == tk else 0), 0, 0, 0, 0
        if self.lo == self.hi:
            return self._slot_fields(arr)[1:]
        pair = 0
        if max(self.lo - 1, 1) < m:  # as an n-gram: from its context's fields (seen_once)
            c, _, tk, b = self._context(arr[:-1])
            if c and c == b:
                pair = b if int(arr[-1]) == tk else 0
            elif c:
                pair = self._slot_fields(arr)[1]
        c, d, tk, b = self._context(arr) if m < self.hi else (0, 0, 0, 0)
        return pair, c, d, tk, b

    def _slot_fields(self, arr: np.ndarray) -> tuple[int, int, int, int, int, int]:
        """(slot or -1, pair, ctx, distinct, best token, best count) of a sequence's own slot."""
        s = int(K.find(self.tab, np.uint64(K.seq_key(arr, arr.shape[0] - 1, arr.shape[0]))))
        if s < 0:
            return -1, 0, 0, 0, 0, 0
        p, c, b = K.get_counts(self.tab, self.side, s)
        d, tk = K.get_low(self.tab, s)
        return s, int(p), int(c), int(d), int(tk), int(b)

    def _context(self, arr: np.ndarray) -> tuple[int, int, int, int]:
        """(count, distinct, best token, best count) of arr as a context (several orders):
        walk its suffixes from the shortest length in use, as ``seen_once.walk_once`` does."""
        m = arr.shape[0]
        for L in range(max(self.lo - 1, 1), m + 1):
            s, _, c, d, tk, b = self._slot_fields(arr[m - L:])
            if c == 0:
                return 0, 0, 0, 0
            if c == 1:  # seen once, followed by position q: arr too iff the tokens agree
                q = int(seen_at(self.tab, s))
                same = q - m >= self.context_start[q] and np.array_equal(self.tokens[q - m:q], arr)
                return (1, 1, int(self.tokens[q]), 1) if same else (0, 0, 0, 0)
            if L == m:
                return c, d, tk, b
        return 0, 0, 0, 0

    def memory_bytes(self) -> int:
        """Bytes held by the store (tables, unigram, learned-position map); not the tokens."""
        return int(self.tab.nbytes + self.side.nbytes + self.unigram.nbytes + self.learned.nbytes)

    def stats(self) -> dict:
        mem = self.memory_bytes()
        return {
            "entries": self.n_main, "side_entries": self.n_side,
            "capacity": int(self.tab.shape[0]), "load": self.n_main / self.tab.shape[0],
            "memory_bytes": mem,
            "bytes_per_ngram": mem / max(self.n_main, 1),
            "bytes_per_token": mem / max(self.total, 1),
        }


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
    st = NgramStore(8, 2, 3, capacity=64)
    st.bind(np.arange(300, dtype=np.uint16) % 3)
    for kind in (K.MIX, K.TILT):
        st.run(np.arange(3, 5), kind, learn=False)
    st.run(np.arange(0, 150), K.MIX)
    st.run(np.arange(150, 200), K.TILT, 0.5, True)
    st.update(np.arange(200, 300))  # past the 64 slots: grows (rehash)
    K.wb_full_kernel(st.tab, st.side, st.unigram, 8, 8, st.tokens, st.context_start, 5, 2, 3, np.zeros(8))
    out = np.zeros(2)
    K.entropy_kernel(np.zeros((2, 8), np.float32), out)
    K.entropy_kernel(np.zeros((2, 8), np.float64), out)
    _COMPILE_SECONDS = time.perf_counter() - t0
    return _COMPILE_SECONDS
