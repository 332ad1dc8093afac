"""Exact multi-order n-gram count store (score-first: it learns only through ``update``).

Orders lo..hi (order n = n-1 context tokens + the next token). For every stored sequence the
table keeps its count as an n-gram, its count as a context, the number of distinct
continuations (Witten-Bell's T(h), +1 when a (ctx, next) count goes 0 -> 1) and the argmax
continuation with its count (the tilt's hint, O(1)). See ``table`` for the slot layout.
Tables grow (rehash at ``max_load``) and never drop an entry, so every count is exact.

Sizing: with ``capacity=None`` (the mixer's default) ``bind`` sizes the table from the stream
length, SLOTS_PER_TOKEN_PER_ORDER slots per token and order (FineWeb sp1024 stores ~0.77 new
keys per token and order at 10M tokens, orders 2-11: the table ends ~77% full at 160 bytes per
token). Why: growing from a small table rehashed every key ~2x and faulted in ~3x the final
memory, which cost more CPU than all the scoring. A stream with more novel n-grams still
grows (to 1.5x, 240 bytes per token). An explicit capacity keeps the old grow-from-small path.
"""
from __future__ import annotations

import time

import numpy as np

from . import kernels as K
from .errors import CacheInputError

MAX_VOCAB = 65535  # tokens and distinct-continuation counts are stored in 16 bits
SLOTS_PER_TOKEN_PER_ORDER = 1.0
MEMO_ROWS = 512  # keys of up to this many positions are kept from score for update


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
        # scratch of the kernels, allocated once (no per-call allocation): score's key memo
        # (ck, pk rows and memo = [n, positions...]), update's slot rows, context statistics.
        self.ck = np.zeros((MEMO_ROWS, self.hi + 1), np.uint64)
        self.pk = np.zeros((MEMO_ROWS, self.hi + 1), np.uint64)
        self.memo = np.zeros(MEMO_ROWS + 1, np.int64)
        self.stat = np.zeros((4, self.hi + 1), np.int64)
        self._slots = np.zeros((2, self.hi + 1), np.int64)
        self.reset()

    def reset(self) -> None:
        cap = self.initial_capacity
        if cap is None:
            per_token = SLOTS_PER_TOKEN_PER_ORDER * (self.hi - self.lo + 1)
            cap = max(1 << 16, int(per_token * self.tokens.shape[0]))
        self.tab = K.table_zeros(cap, 2)
        self.side = np.zeros((1024, 3), np.uint64)
        # [main entries, side entries, learned tokens, main limit, side limit]: the kernels
        # keep it current, so a call needs no Python-side bookkeeping.
        self.meta = np.zeros(5, np.int64)
        self._set_limits()
        self.unigram = np.zeros(self.vocab_size, np.int64)
        self.learned = np.zeros(self.tokens.shape[0], np.uint8)
        self.memo[0] = 0

    n_main = property(lambda self: int(self.meta[0]))
    n_side = property(lambda self: int(self.meta[1]))
    total = property(lambda self: int(self.meta[2]))

    def _set_limits(self) -> None:
        self.meta[3] = int(self.max_load * self.tab.shape[0])
        self.meta[4] = int(self.max_load * self.side.shape[0])

    def bind(self, tokens: np.ndarray) -> None:
        """Bind the evaluation stream and start from an empty store."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise CacheInputError(f"tokens must be 1-D, got shape {arr.shape}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size):
            raise CacheInputError(f"token ids must lie in [0, {self.vocab_size})")
        if arr.size >= 1 << 32:
            raise CacheInputError("streams of 2^32 tokens or more overflow the 32-bit counts")
        self.tokens = np.ascontiguousarray(arr, dtype=np.uint16)  # no copy if already uint16
        self.reset()

    # -- growth ---------------------------------------------------------------------------
    def _grow(self, n_positions: int) -> None:
        """Make room for 2 (hi - lo + 1) new keys per position in both tables."""
        worst = 2 * (self.hi - self.lo + 1) * n_positions
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
            new = np.zeros((new_cap, 3), np.uint64)
            K.rehash_kernel(self.side, new)
            self.side = new
        self._set_limits()

    def update(self, positions: np.ndarray, chunk: int = 8192) -> None:
        """Learn the n-grams ending at ``positions`` (any order, each position at most once)."""
        pos = positions
        if not (type(pos) is np.ndarray and pos.dtype == np.int64 and pos.flags.c_contiguous):
            pos = np.ascontiguousarray(positions, dtype=np.int64)
        for a in range(0, pos.shape[0], chunk):
            part = pos if pos.shape[0] <= chunk else pos[a:a + chunk]
            while True:
                code, t = K.update_kernel(self.tab, self.side, self.unigram, self.learned,
                                          self.tokens, part, self.lo, self.hi, self._slots,
                                          self.meta, self.ck, self.pk, self.memo)
                if code != K.NEED_ROOM:
                    break
                self._grow(part.shape[0])
            if code == K.BAD_POSITION:
                raise CacheInputError(
                    f"update: position {t} is outside [0, {self.tokens.shape[0]}) or was already learned")

    # -- inspection (tests, reports) --------------------------------------------------------
    def lookup(self, seq) -> tuple[int, int, int, int, int]:
        """(pair count, ctx count, distinct continuations, best token, best count) of a sequence."""
        arr = np.asarray(seq, dtype=np.uint16)
        key = K.seq_key(arr, arr.shape[0] - 1, arr.shape[0])
        s = K.find(self.tab, np.uint64(key))
        if s < 0:
            return 0, 0, 0, 0, 0
        p, c, b = K.get_counts(self.tab, self.side, s)
        d, tk = K.get_low(self.tab, s)
        return int(p), int(c), int(d), int(tk), int(b)

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
    cache (``cache=True``) and take well under a second. The value is memoised. The score
    kernel is compiled for the row types the engine (float32) and the benchmark (a read-only
    broadcast float64 view) pass; other row types compile on first use.
    """
    global _COMPILE_SECONDS
    if _COMPILE_SECONDS is not None:
        return _COMPILE_SECONDS
    t0 = time.perf_counter()
    st = NgramStore(8, 2, 3, capacity=64)
    st.bind(np.arange(8, dtype=np.uint16) % 3)
    pos = np.arange(8, dtype=np.int64)
    ent = np.ones(8)
    out = np.zeros(8)
    for lp in (np.full((8, 8), -1.0, np.float32), np.broadcast_to(np.full(8, -1.0), (8, 8))):
        K.score_mix_kernel(st.tab, st.side, st.unigram, st.meta, 8, st.tokens, pos, lp, ent, 2, 3,
                         0.3, 1.0, 1.0, 1.0, st.ck, st.pk, st.memo, st.stat, out)
    st.update(pos)
    K.rehash_kernel(st.tab, np.zeros((96, 2), np.uint64))
    K.wb_full_kernel(st.tab, st.side, st.unigram, 8, 8, st.tokens, 5, 2, 3, np.zeros(8))
    K.tilt_hint_kernel(st.tab, st.side, st.tokens, pos, ent, 2, 3, 1.0, 1.0, 1.0, st.ck, st.pk,
                     st.memo, st.stat, np.zeros(8, np.int64), np.zeros(8))
    K.entropy_kernel(np.zeros((2, 8), np.float32), out)
    K.entropy_kernel(np.zeros((2, 8), np.float64), out)
    _COMPILE_SECONDS = time.perf_counter() - t0
    return _COMPILE_SECONDS
