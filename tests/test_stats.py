"""Paired bootstrap over documents (evalkit.stats) on synthetic numbers with known answers."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from evalkit.ablate import stats
from evalkit.ablate.stats import DocSums, compare, resample_sums

LN2 = math.log(2)


def docs(nll, nbytes, tokens=None) -> DocSums:
    nbytes = np.asarray(nbytes, np.int64)
    return DocSums(np.asarray(nll, np.float64), nbytes, np.asarray(tokens if tokens is not None else nbytes))


def test_point_estimate_is_the_ratio_of_sums_and_pairs_by_document():
    rng = np.random.default_rng(1)
    nbytes = rng.integers(50, 5000, 40)
    base = docs(nbytes * rng.uniform(0.7, 1.3, 40), nbytes, nbytes // 3)
    strat = docs(base.nll - rng.uniform(0, 3, 40), nbytes, nbytes // 3)
    c = compare(strat, base, replicates=199)
    want = ((strat.nll.sum() - base.nll.sum()) / LN2) / nbytes.sum()
    assert c.delta_bpb == pytest.approx(want, rel=1e-12)
    assert c.delta_nats == pytest.approx((strat.nll.sum() - base.nll.sum()) / (nbytes // 3).sum(), rel=1e-12)
    # Shuffling the strategy's documents breaks the pairing: same point, much wider interval.
    perm = rng.permutation(40)
    shuffled = compare(docs(strat.nll[perm], nbytes[perm], (nbytes // 3)[perm]), base, replicates=199)
    assert shuffled.ci_bpb[1] - shuffled.ci_bpb[0] > 5 * (c.ci_bpb[1] - c.ci_bpb[0])


def test_constant_gain_per_byte_has_a_zero_width_interval():
    nbytes = np.arange(10, 60)
    base = docs(nbytes * 1.1, nbytes)
    strat = docs(base.nll - 0.02 * LN2 * nbytes, nbytes)  # exactly 0.02 bits per byte better everywhere
    c = compare(strat, base, replicates=999, seed=3)
    assert c.ci_bpb == pytest.approx((-0.02, -0.02), abs=1e-12)
    assert c.p_value == pytest.approx(1 / 1000) and c.p_value_t == pytest.approx(0.0, abs=1e-12)
    # 0.02 bits/byte = 0.02 ln2 nats/token here (one byte per token): about 0.0139 > 0.005.
    assert c.delta_nats == pytest.approx(-0.02 * LN2) and c.p_value_margin == pytest.approx(1 / 1000)
    worse = compare(base, strat, replicates=999)
    assert worse.p_value == 1.0 and worse.delta_bpb == pytest.approx(0.02)


def test_margin_p_value_asks_for_more_than_0005_nats():
    nbytes = np.full(30, 100)
    base = docs(np.full(30, 250.0), nbytes)
    small = compare(docs(base.nll - 0.002 * 100, nbytes), base, replicates=499)  # 0.002 nats/token gain
    assert small.p_value == pytest.approx(1 / 500) and small.p_value_margin == 1.0


def test_equal_bytes_delta_method_is_the_paired_t_test():
    rng = np.random.default_rng(7)
    d = rng.normal(-0.3, 2.0, 60)
    base = docs(rng.uniform(100, 200, 60), np.full(60, 80))
    strat = docs(base.nll + d, np.full(60, 80))
    want = sps.ttest_1samp(d, 0.0, alternative="less").pvalue  # H0: no gain
    assert stats.delta_method_p(strat, base) == pytest.approx(want, rel=1e-9)


def test_interval_width_matches_the_standard_error():
    rng = np.random.default_rng(11)
    n, sigma = 400, 3.0
    base = docs(np.full(n, 500.0), np.full(n, 100))
    strat = docs(base.nll + rng.normal(0, sigma, n), np.full(n, 100))
    c = compare(strat, base, replicates=4999, seed=5)
    se_bpb = sigma / math.sqrt(n) / LN2 / 100
    assert (c.ci_bpb[1] - c.ci_bpb[0]) / (2 * 1.96 * se_bpb) == pytest.approx(1.0, abs=0.1)


def test_coverage_and_null_calibration_on_simulated_splits():
    """True per-byte gain known: the 95% interval covers it about 95% of the time, and under
    no gain p < 0.05 about 5% of the time (seeded, so the counts are fixed)."""
    rng = np.random.default_rng(2024)
    covered, rejected, trials, n = 0, 0, 200, 60
    for t in range(trials):
        nbytes = rng.integers(100, 1000, n)
        base = docs(nbytes * 1.0 + rng.normal(0, 20, n), nbytes)
        noise = rng.normal(0, 0.05, n) * nbytes
        gain = compare(docs(base.nll - 0.01 * LN2 * nbytes + noise, nbytes), base, replicates=499, seed=t)
        covered += gain.ci_bpb[0] <= -0.01 <= gain.ci_bpb[1]
        null = compare(docs(base.nll + noise, nbytes), base, replicates=499, seed=t)
        rejected += null.p_value < 0.05
    assert 0.88 <= covered / trials <= 0.99
    assert 0.01 <= rejected / trials <= 0.11


def test_resampling_is_seeded_and_chunking_keeps_whole_replicates(monkeypatch):
    cols = np.random.default_rng(0).normal(size=(37, 3))
    whole = resample_sums(cols, 50, seed=9)
    np.testing.assert_array_equal(whole, resample_sums(cols, 50, seed=9))
    assert not np.array_equal(whole, resample_sums(cols, 50, seed=10))
    monkeypatch.setattr(stats, "_CELLS_PER_CHUNK", 37 * 7)  # 7 replicates per chunk, the last one short
    ones = resample_sums(np.ones((37, 1)), 20, seed=1)
    assert (ones == 37).all()  # every replicate draws exactly D documents


def test_strategies_with_different_bytes_compare_their_own_ratios():
    nbytes = np.array([100, 200, 300])
    base = docs([300.0, 500.0, 700.0], nbytes)
    dropped = docs([300.0, 500.0, 0.0], [100, 200, 0], [100, 200, 0])  # a run that left the tail unscored
    c = compare(dropped, base, replicates=99)
    assert c.delta_bpb == pytest.approx(800 / LN2 / 300 - 1500 / LN2 / 600)


def test_refuses_unpaired_or_tiny_inputs():
    with pytest.raises(ValueError, match="documents differ"):
        compare(docs([1.0, 2.0], [1, 1]), docs([1.0, 2.0, 3.0], [1, 1, 1]))
    with pytest.raises(ValueError, match="at least 2"):
        compare(docs([1.0], [1]), docs([2.0], [1]))
