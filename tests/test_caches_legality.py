"""C1/C2/C3 checks on both predictors, and the illegal hashed-ratio fixture failing C2."""
from pathlib import Path

import numpy as np
import pytest

from caches import parse_ngram_spec
from caches.illegal import IllegalHashedRatioMixer

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
    m.update(np.arange(upto))
    return m


@pytest.mark.parametrize("V", [1024, 8192])
@pytest.mark.parametrize("kind", ["mix:orders=2-11,wmax=0.5", "tilt:orders=2-11,beta=2"])
def test_full_distribution_sums_to_one_and_matches_fast_path(V, kind):
    toks = stream(V, 20000)
    m = learned_mixer(kind, V, toks, 15000)
    pos = np.sort(np.random.default_rng(V).choice(np.arange(15000, 20000), 12, replace=False))
    lp = model_rows(12, V, 0)
    d = m.distribution(pos, lp)
    sums = np.exp(d).sum(axis=1)
    print(f"{kind} V={V}: max |sum - 1| = {np.abs(sums - 1).max():.2e}")
    assert np.abs(sums - 1).max() <= 1e-9
    fast = m.score(pos, lp)
    diff = np.abs(fast - d[np.arange(12), toks[pos]]).max()
    print(f"OK, maxdiff = {diff:.3e} (fast vs slow at target)")
    assert diff <= 1e-12
    if kind.startswith("mix"):  # the n-gram distribution on its own is normalized too
        p, best_L, _ = m.predictor.ngram_distribution(m.store, int(pos[0]))
        assert abs(p.sum() - 1) <= 1e-9 and best_L > 0


@pytest.mark.parametrize("kind", ["mix:orders=2-11", "tilt:orders=2-11"])
def test_target_and_future_independence(kind):
    V = 1024
    toks = stream(V, 6000).copy()
    t = 5000
    lp = model_rows(1, V, 1)
    a = learned_mixer(kind, V, toks, t)
    d_a = a.distribution(np.array([t]), lp)
    s_a = a.score(np.array([t]), lp)
    for new in (int(toks[t]) ^ 1, int(a.store.lookup(toks[t - 1:t])[3])):  # incl. the hint token
        other = toks.copy()
        other[t] = new
        other[t + 1:] = np.random.default_rng(new).integers(0, V, other.shape[0] - t - 1)
        b = learned_mixer(kind, V, other, t)
        assert np.array_equal(d_a, b.distribution(np.array([t]), lp))
        assert b.score(np.array([t]), lp)[0] == d_a[0, new]
    assert s_a[0] == d_a[0, toks[t]]


def test_score_does_not_change_state():
    toks = stream(1024, 3000)
    m = learned_mixer("mix:orders=2-11", 1024, toks, 2000)
    snap = (m.store.tab.copy(), m.store.side.copy(), m.store.unigram.copy(), m.store.learned.copy())
    m.score(np.arange(2000, 2064), model_rows(64, 1024, 2))
    m.distribution(np.arange(2000, 2004), model_rows(4, 1024, 3))
    after = (m.store.tab, m.store.side, m.store.unigram, m.store.learned)
    assert all(np.array_equal(x, y) for x, y in zip(snap, after))


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
