"""The exact count store: growth keeps every count exact, wide counts, memory report."""
import numpy as np
import pytest

from caches import CacheInputError, NgramStore
from caches.reference import RefNgram


def test_growth_and_wide_counts_stay_exact():
    # 4 symbols, 30k tokens: low-order counts pass the 10-bit inline limit (side table) and
    # the table grows from 16 slots many times.
    rng = np.random.default_rng(3)
    toks = rng.integers(0, 4, 30000).astype(np.uint16)
    st = NgramStore(4, 2, 6, capacity=16)
    st.bind(toks)
    ref = RefNgram(4, 2, 6)
    ref.bind(toks)
    for a in range(0, 30000, 777):
        st.update(np.arange(a, min(a + 777, 30000)))
    ref.update(range(30000))
    assert st.tab.shape[0] > 16 * 100 and st.n_side > 0
    for seq, c in ref.pair.items():
        assert st.lookup(seq)[0] == c, seq
    for h, (c, d, tk, b) in ref.ctx.items():
        assert st.lookup(h)[1:] == (c, d, tk, b), h
    assert st.n_main == len(set(ref.pair) | set(ref.ctx))
    s = st.stats()
    assert s["bytes_per_ngram"] == pytest.approx(st.memory_bytes() / st.n_main)
    assert s["load"] <= 0.8


def test_update_refuses_relearning_and_out_of_range():
    st = NgramStore(8, 2, 4)
    st.bind(np.arange(100) % 8)
    st.update(np.arange(10))
    before = st.tab.copy()
    with pytest.raises(CacheInputError):
        st.update(np.array([10, 11, 5]))  # 5 was learned already
    with pytest.raises(CacheInputError):
        st.update(np.array([12, 12]))
    with pytest.raises(CacheInputError):
        st.update(np.array([100]))
    assert np.array_equal(before, st.tab) and st.learned[10:].sum() == 0


def test_bind_rejects_bad_tokens():
    st = NgramStore(8, 2, 4)
    with pytest.raises(CacheInputError):
        st.bind(np.array([1, 2, 8]))
    with pytest.raises(CacheInputError):
        NgramStore(70000)


def test_single_order_lazy_ngrams_stay_exact():
    """One order: n-gram entries exist only for contexts with two or more continuations, yet
    every count (as lookup reports it) equals the reference's, and fewer keys are stored."""
    rng = np.random.default_rng(5)
    toks = rng.integers(0, 3, 20000).astype(np.uint16)
    for n in (3, 6):
        st = NgramStore(3, n, n, capacity=16)
        st.bind(toks)
        ref = RefNgram(3, n, n)
        ref.bind(toks)
        for a in range(0, 20000, 999):
            st.update(np.arange(a, min(a + 999, 20000)))
        ref.update(range(20000))
        for seq, c in ref.pair.items():
            assert st.lookup(seq)[0] == c, seq
        for h, (c, d, tk, b) in ref.ctx.items():
            assert st.lookup(h)[1:] == (c, d, tk, b), h
        uniform = sum(1 for c, d, _, _ in ref.ctx.values() if d == 1)
        assert st.n_main == len(ref.ctx) + len(ref.pair) - uniform
