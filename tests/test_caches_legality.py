"""C1/C2/C3 checks on both predictors, and the illegal hashed-ratio fixture failing C2."""
from pathlib import Path

import numpy as np
import pytest

from caches import parse_ngram_spec
from caches.illegal import IllegalHashedRatioMixer
from caches.predictors import row_entropy

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARDS = {1024: "fineweb_verify200_sp1024_val_000000.bin", 8192: "fineweb_verify200_sp8192_val_000000.bin"}


def stream(V: int, n: int) -> np.ndarray:
    path = SHARED / "corpus" / "shards" / SHARDS[V]
    if not path.exists():
        pytest.skip(f"{path} not available")
    return np.fromfile(path, dtype="<u2", offset=1024, count=n)


def model_rows(n: int, V: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, V)) * 3
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def learned_mixer(spec: str, V: int, toks: np.ndarray, upto: int):
    m = parse_ngram_spec(V, spec)
    m.bind(toks)
    m.learn(np.arange(upto))
    return m


def fast_at(m, t: int, row: np.ndarray, ent: float) -> float:
    """advance([t]) then combine: the engine's fast path at one position (learns t)."""
    aux = m.advance(np.array([t]))
    hint = m.hint_tokens(aux)
    hint_lp = None if hint is None else row[np.maximum(hint, 0)]
    return float(m.combine(aux, row[[int(m.store.tokens[t])]], hint_lp, np.array([ent]))[0])


@pytest.mark.parametrize("V", [1024, 8192])
@pytest.mark.parametrize("kind", ["mix:orders=2-11,wmax=0.5", "tilt:orders=2-11,beta=2",
                                  "tilt:preset=records", "tilt:orders=2-11,gate=0.5,scale=const"])
def test_full_distribution_sums_to_one_and_matches_fast_path(V, kind):
    toks = stream(V, 20000)
    m = learned_mixer(kind, V, toks, 15000)
    pos = np.sort(np.random.default_rng(V).choice(np.arange(15000, 20000), 12, replace=False))
    lp = model_rows(12, V, 0)
    ent = row_entropy(lp)
    worst_sum, worst_diff, prev = 0.0, 0.0, 15000
    for i, t in enumerate(pos):
        m.learn(np.arange(prev, t))
        d = m.distribution(int(t), lp[i], float(ent[i]))
        worst_sum = max(worst_sum, abs(np.exp(d).sum() - 1))
        worst_diff = max(worst_diff, abs(fast_at(m, int(t), lp[i], float(ent[i])) - d[toks[t]]))
        prev = t + 1
    print(f"{kind} V={V}: max |sum - 1| = {worst_sum:.2e}; maxdiff = {worst_diff:.3e} (fast vs slow at target)")
    assert worst_sum <= 1e-9 and worst_diff <= 1e-12
    if kind.startswith("mix"):  # the n-gram distribution on its own is normalized too
        p, best_L, _ = m.predictor.ngram_distribution(m.store, int(pos[-1]) + 1)
        assert abs(p.sum() - 1) <= 1e-9 and best_L > 0


@pytest.mark.parametrize("kind", ["mix:orders=2-11", "tilt:orders=2-11", "tilt:preset=records"])
def test_target_and_future_independence(kind):
    V = 1024
    toks = stream(V, 6000).copy()
    t = 5000
    lp = model_rows(1, V, 1)[0]
    ent = float(row_entropy(lp[None])[0])
    a = learned_mixer(kind, V, toks, t)
    d_a = a.distribution(t, lp, ent)
    s_a = fast_at(a, t, lp, ent)
    for new in (int(toks[t]) ^ 1, int(a.store.lookup(toks[t - 1:t])[3])):  # incl. the hint token
        other = toks.copy()
        other[t] = new
        other[t + 1:] = np.random.default_rng(new).integers(0, V, other.shape[0] - t - 1)
        b = learned_mixer(kind, V, other, t)
        assert np.array_equal(d_a, b.distribution(t, lp, ent))
        assert fast_at(b, t, lp, ent) == d_a[new]
    assert s_a == d_a[toks[t]]


def test_distribution_does_not_change_state():
    toks = stream(1024, 3000)
    for spec in ("mix:orders=2-11", "tilt:preset=records"):
        m = learned_mixer(spec, 1024, toks, 2000)
        snap = (m.store.tab.copy(), m.store.side.copy(), m.store.unigram.copy(), m.store.learned.copy(),
                m.store.meta.copy())
        lp = model_rows(4, 1024, 3)
        for i in range(4):
            m.distribution(2000, lp[i], 1.0)
        after = (m.store.tab, m.store.side, m.store.unigram, m.store.learned, m.store.meta)
        assert all(np.array_equal(x, y) for x, y in zip(snap, after))


def test_advance_refuses_a_position_twice():
    toks = stream(1024, 3000)
    m = learned_mixer("tilt:orders=2-5", 1024, toks, 100)
    with pytest.raises(ValueError, match="position 50"):
        m.advance(np.array([100, 101, 50]))
    with pytest.raises(ValueError, match="position 102"):
        m.advance(np.array([102, 102]))
    assert m.store.learned[100:].sum() == 0  # a refused call learns nothing


def test_illegal_hashed_ratio_fails_normalization():
    V = 1024
    toks = stream(V, 12000)
    m = IllegalHashedRatioMixer(V, buckets=4096)
    m.bind(toks)
    m.update(range(10000))
    pos = np.arange(10000, 10008)
    sums = np.exp(m.distribution(pos, model_rows(8, V, 4))).sum(axis=1)
    print(f"illegal hashed ratio: sums over the vocabulary {np.round(sums, 1)}")
    assert np.abs(sums - 1).max() > 1.0  # far from a distribution: what C2 catches


@pytest.mark.parametrize("V", [1024, 8192])
def test_own_distribution_is_the_caches_and_sums_to_one(V):
    """The audit sums the cache's own distribution apart from the combined one: mix exposes
    its Witten-Bell distribution (a whole distribution at every state), a tilt has none."""
    toks = stream(V, 3000).astype(np.int64)
    m = learned_mixer("mix:orders=2-6", V, toks, 2000)
    worst = max(abs(float(np.exp(m.own_distribution(t)).sum()) - 1.0) for t in (2000, 2001, 2500))
    print(f"mix own distribution at V={V}: max |sum p - 1| = {worst:.3e}")
    assert worst < 1e-12
    assert learned_mixer("tilt:orders=2-6", V, toks, 2000).own_distribution(2000) is None
