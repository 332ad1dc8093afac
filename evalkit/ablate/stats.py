"""Paired comparisons of two strategies over the same documents.

val_bpb is a ratio of sums, (sum nll / ln 2) / sum bytes, so a strategy's difference from
the baseline is a difference of two ratio estimators over the same documents. Documents
(not tokens) are the resampling unit: tokens inside a document are correlated, documents
are the independent draws from the corpus. Every statistic here is computed on whole
documents resampled with replacement, with a seeded generator, so a table reproduces.

p-value choice. `p_value` is the one-sided bootstrap p-value that the strategy is NOT
better than the baseline: (1 + #{replicates with delta >= 0}) / (B + 1). It uses the same
replicates as the interval (so the two never disagree about the sign), makes no normality
assumption (per-document differences are heavy-tailed because document lengths are), and
the +1 keeps it from ever reporting 0; its resolution is 1 / (B + 1), about 1e-4 at the
default B = 9,999, well below the challenge's 0.01. `p_value_t` is a cross-check from the
delta-method standard error of the ratio with a Student t on D - 1 degrees of freedom
(scipy); when the two disagree wildly the split has too few documents to trust either.

`p_value_margin` asks the challenge's own question: is the improvement in mean NLL per
token larger than `margin_nats` (0.005 nats by default)? It is the fraction of
replicates whose delta in nats per token is >= -margin, with the same +1 correction.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

DEFAULT_REPLICATES = 9_999
CHALLENGE_MARGIN_NATS = 0.005  # a record must beat the previous one by this much mean NLL per token
_CELLS_PER_CHUNK = 4_000_000  # replicate x document count matrix cells held at once (~32 MB)


@dataclass(frozen=True)
class DocSums:
    """One strategy's per-document totals (the pairing key is the array index)."""

    nll: np.ndarray  # float64 (D,) nats
    nbytes: np.ndarray  # (D,) bytes charged
    tokens: np.ndarray  # (D,) scored targets

    def columns(self) -> np.ndarray:
        """(D, 3) float64: nll in bits, bytes, tokens."""
        return np.stack([np.asarray(self.nll, np.float64) / math.log(2),
                         np.asarray(self.nbytes, np.float64), np.asarray(self.tokens, np.float64)], axis=1)


@dataclass(frozen=True)
class Comparison:
    """strategy minus baseline; negative deltas mean the strategy is better."""

    delta_bpb: float
    ci_bpb: tuple[float, float]
    p_value: float
    p_value_t: float
    delta_nats: float  # mean NLL per token, nats
    ci_nats: tuple[float, float]
    p_value_margin: float
    margin_nats: float
    docs: int
    replicates: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def resample_sums(columns: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """(B, K) column sums over B bootstrap resamples of the D rows of `columns` (D, K).

    Each replicate draws D documents with replacement; the draw is turned into per-document
    counts so the sums are one matrix product per chunk of replicates."""
    d = columns.shape[0]
    if d < 2:
        raise ValueError(f"a paired bootstrap needs at least 2 documents, got {d}")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS_PER_CHUNK // d)
    out = np.empty((replicates, columns.shape[1]), dtype=np.float64)
    for lo in range(0, replicates, chunk):
        n = min(chunk, replicates - lo)
        draws = rng.integers(0, d, size=(n, d)) + (np.arange(n) * d)[:, None]
        counts = np.bincount(draws.ravel(), minlength=n * d).reshape(n, d)
        out[lo:lo + n] = counts @ columns
    return out


def _ratio_deltas(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From (..., 6) sums [bits_s, bytes_s, tok_s, bits_b, bytes_b, tok_b]: delta bpb and
    delta nats per token (strategy minus baseline)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample of only unscored documents: NaN
        bpb = sums[..., 0] / sums[..., 1] - sums[..., 3] / sums[..., 4]
        nats = (sums[..., 0] / sums[..., 2] - sums[..., 3] / sums[..., 5]) * math.log(2)
    return bpb, nats


def _upper_tail_p(replicates: np.ndarray, threshold: float) -> float:
    return float((1 + np.count_nonzero(replicates >= threshold)) / (replicates.size + 1))


def delta_method_p(strategy: DocSums, baseline: DocSums) -> float:
    """One-sided p (strategy not better) from the linearised ratio estimator and a t on D-1 df."""
    s, b = strategy.columns(), baseline.columns()
    d = s.shape[0]
    rs, rb = s[:, 0].sum() / s[:, 1].sum(), b[:, 0].sum() / b[:, 1].sum()
    # Influence of each document on (ratio_s - ratio_b), scaled to a per-document mean.
    z = (s[:, 0] - rs * s[:, 1]) / s[:, 1].mean() - (b[:, 0] - rb * b[:, 1]) / b[:, 1].mean()
    se = z.std(ddof=1) / math.sqrt(d)
    delta = rs - rb
    if se == 0:
        return 1.0 if delta >= 0 else 0.0
    return float(sps.t.cdf(delta / se, df=d - 1))  # H0: delta >= 0; small when clearly negative


def compare(strategy: DocSums, baseline: DocSums, replicates: int = DEFAULT_REPLICATES, seed: int = 0,
            margin_nats: float = CHALLENGE_MARGIN_NATS, level: float = 0.95) -> Comparison:
    """Paired bootstrap of strategy vs baseline over documents (see the module docstring)."""
    if len(strategy.nll) != len(baseline.nll):
        raise ValueError(f"documents differ: {len(strategy.nll)} vs {len(baseline.nll)}; pairs need one split")
    cols = np.concatenate([strategy.columns(), baseline.columns()], axis=1)
    point_bpb, point_nats = _ratio_deltas(cols.sum(axis=0))
    boot_bpb, boot_nats = _ratio_deltas(resample_sums(cols, replicates, seed))
    q = [(1 - level) / 2, (1 + level) / 2]
    lo_b, hi_b = np.nanquantile(boot_bpb, q)
    lo_n, hi_n = np.nanquantile(boot_nats, q)
    return Comparison(delta_bpb=float(point_bpb), ci_bpb=(float(lo_b), float(hi_b)),
                      p_value=_upper_tail_p(boot_bpb, 0.0), p_value_t=delta_method_p(strategy, baseline),
                      delta_nats=float(point_nats), ci_nats=(float(lo_n), float(hi_n)),
                      p_value_margin=_upper_tail_p(boot_nats, -margin_nats), margin_nats=margin_nats,
                      docs=len(strategy.nll), replicates=replicates, seed=seed)


def bpb_interval(sums: DocSums, replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Unpaired bootstrap interval of one strategy's bpb (for plots: how far the split's
    document sample leaves the number uncertain, before pairing removes the shared part)."""
    boot = resample_sums(sums.columns()[:, :2], replicates, seed)
    ratio = boot[:, 0] / boot[:, 1]
    lo, hi = np.quantile(ratio, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
