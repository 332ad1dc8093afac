"""Numba kernels vs the pure-Python reference (caches/reference.py): counts and log-probs."""
from pathlib import Path

import numpy as np
import pytest

from caches import kernels as K
from caches import parse_ngram_spec
from caches.store import NgramStore
from caches.predictors import row_entropy
from caches.reference import RefNgram, mix_logp, tilt_logp

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shard_tokens(name: str = "fineweb_verify200_sp1024_val_000000.bin", n: int = 4000) -> np.ndarray:
    path = SHARED / "corpus" / "shards" / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520
    return np.fromfile(path, dtype="<u2", offset=1024, count=min(n, int(header[2])))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


# the default (gated, constant) tilt and the entropy-scaled ungated one
KINDS = ["mix", "tilt", "tilt,gate=0,scale=entropy,beta=1.5"]


def mixed_logp(m, pos: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """The engine's fast path on host rows: advance, gather target / hint, combine."""
    aux = m.advance(pos)
    rows = np.arange(pos.shape[0])
    hint = m.hint_tokens(aux)
    hint_lp = None if hint is None else lp[rows, np.maximum(hint, 0)]
    return m.combine(aux, lp[rows, m.store.tokens[pos]], hint_lp, row_entropy(lp))


def run_both(kind: str, toks: np.ndarray, V: int, lo: int, hi: int, n_score: int, seed: int = 0):
    """Learn the stream in 64-token segments, then score-and-learn the last n_score positions
    per token (the reference learns each position right after scoring it)."""
    rng = np.random.default_rng(seed)
    name, _, extra = kind.partition(",")
    m = parse_ngram_spec(V, f"{name}:orders={lo}-{hi},cap=64" + (f",{extra}" if extra else ""))
    ref = RefNgram(V, lo, hi)
    m.bind(toks)
    ref.bind(toks)
    N = toks.shape[0]
    start = N - n_score
    for a in range(0, start, 64):
        pos = np.arange(a, min(a + 64, start))
        m.learn(pos)
        ref.update(pos)
    fast, slow = [], []
    fn = mix_logp if name == "mix" else tilt_logp if not extra else (
        lambda r, t, a, row: tilt_logp(r, t, a, row, beta=1.5, gate=0.0, const=False))
    for a in range(start, N, 16):
        pos = np.arange(a, min(a + 16, N))
        # a peaked model row on some positions so both branches of the sigmoid are used
        lp = log_softmax(rng.normal(size=(pos.shape[0], V)) * rng.choice([0.5, 4.0]))
        fast.append(mixed_logp(m, pos, lp))
        for i, t in enumerate(pos):
            slow.append(fn(ref, int(t), int(toks[t]), lp[i]))
            ref.update([t])
    return np.concatenate(fast), np.array(slow)


@pytest.mark.parametrize("kind", KINDS)
def test_every_order_random_stream(kind):
    rng = np.random.default_rng(1)
    V = 6  # a small alphabet so every order has repeated contexts
    toks = rng.integers(0, V, 1500).astype(np.uint16)
    worst = 0.0
    for n in range(2, 12):
        fast, slow = run_both(kind, toks, V, n, n, 120, seed=n)
        worst = max(worst, float(np.abs(fast - slow).max()))
    fast, slow = run_both(kind, toks, V, 2, 11, 200)
    worst = max(worst, float(np.abs(fast - slow).max()))
    print(f"OK, maxdiff = {worst:.3e}  ({kind}, random stream, orders 2..11 each and 2-11)")
    assert worst <= 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_every_order_real_stream(kind):
    toks = shard_tokens(n=3000)
    worst = 0.0
    for lo, hi in [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9), (10, 10), (11, 11), (2, 11)]:
        fast, slow = run_both(kind, toks, 1024, lo, hi, 48 if lo == hi else 128)
        worst = max(worst, float(np.abs(fast - slow).max()))
    print(f"OK, maxdiff = {worst:.3e}  ({kind}, FineWeb sp1024, every order)")
    assert worst <= 1e-12


def test_counts_match_reference_noncontiguous_updates():
    """Positions learned out of order (as from other processes) give the reference's counts."""
    rng = np.random.default_rng(2)
    toks = rng.integers(0, 5, 3000).astype(np.uint16)
    m = parse_ngram_spec(5, "mix:orders=2-7,cap=16")
    ref = RefNgram(5, 2, 7)
    m.bind(toks)
    ref.bind(toks)
    order = rng.permutation(3000)
    for a in range(0, 3000, 100):
        m.learn(order[a:a + 100])
        ref.update(order[a:a + 100])
    st = m.store
    for seq, c in ref.pair.items():
        assert st.lookup(seq)[0] == c, seq
    for h, (c, d, tk, b) in ref.ctx.items():
        assert st.lookup(h)[1:] == (c, d, tk, b), h
    assert st.unigram.tolist() == ref.uni


def random_documents(n: int, rng) -> np.ndarray:
    """context_start for documents of 5-80 tokens: each position's document start."""
    starts = np.cumsum(rng.integers(5, 80, n))
    starts = np.concatenate([[0], starts[starts < n]])
    return starts[np.searchsorted(starts, np.arange(n), side="right") - 1].astype(np.int64)


@pytest.mark.parametrize("docs", [False, True], ids=["stream", "doc-local"])
@pytest.mark.parametrize("lo,hi", [(2, 11), (4, 9), (5, 5)])
def test_seen_once_contexts_after_out_of_order_learning(lo, hi, docs):
    """Contexts seen once are stored by the position that followed them (caches/seen_once.py),
    and their longer contexts by comparing tokens with it. After learning a random half of a
    stream in random order (so that position may lie before or after the one scored), every
    count, every aux (best context, hint, p_WB of the target) and the whole Witten-Bell
    distribution at the unlearned positions equal the reference's. doc-local: contexts stop
    at each position's document start (short random documents), as where documents may be
    scored out of stream order."""
    rng = np.random.default_rng(7)
    streams = [(rng.integers(0, 3, 2400).astype(np.uint16), 3), (shard_tokens(n=2400), 1024)]
    for toks, V in streams:
        st, ref = NgramStore(V, lo, hi, capacity=16), RefNgram(V, lo, hi)
        cstart = random_documents(toks.shape[0], rng) if docs else None
        st.bind(toks, cstart)
        ref.bind(toks, cstart)
        order = rng.permutation(toks.shape[0])
        for a in range(0, 1200, 97):
            st.update(order[a:min(a + 97, 1200)])
            ref.update(order[a:min(a + 97, 1200)])
        for seq, c in ref.pair.items():
            assert st.lookup(seq)[0] == c, seq
        for h, (c, d, tk, b) in ref.ctx.items():
            assert st.lookup(h)[1:] == (c, d, tk, b), h
        rest = np.sort(order[1200:])
        out_i, out_f = st.run(rest, K.MIX, learn=False)
        worst = 0.0
        for i, t in enumerate(rest.tolist()):
            ctxs = ref._contexts(t)
            assert out_i[i] == (ctxs[-1][1][2] if ctxs else -1), t
            if ctxs:
                assert out_f[i, 0] == ctxs[-1][1][0]
                worst = max(worst, abs(out_f[i, 1] - ref.wb_prob(t, int(toks[t]))))
        for t in rest[:40].tolist():  # the slow path the audit reads
            full = np.zeros(V)
            K.wb_full_kernel(st.tab, st.side, st.unigram, st.total, V, st.tokens, st.context_start, t, lo, hi, full)
            picks = range(V) if V < 50 else rng.choice(V, 50, replace=False).tolist() + [int(toks[t])]
            worst = max(worst, max(abs(full[a] - ref.wb_prob(t, a)) for a in picks))
        print(f"OK, maxdiff = {worst:.3e}  (orders {lo}-{hi}, V={V}, half learned out of order, "
              f"{'doc-local' if docs else 'stream'} contexts)")
        assert worst <= 1e-12
