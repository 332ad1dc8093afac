"""Rule C2: at probed positions the strategy's full distribution sums to 1 and its value at
the target equals what the fast path scored.

Probe rows are float64 (evalkit.engine.probes.probe_rows: the strategy's log-probs
renormalized in float64, then through the mixer), so the sum is held to a float64
tolerance and measures the strategy, not rounding. The fast path gathered a float32
(usually) log-softmax at the target: its float32 normalizer error grows like sqrt(V)
rounding steps (measured: 4e-7 at V=1024, 1.4e-6 at V=8192, 8e-6 at V=50000 on rows of
logit std 3-12), so the fast-vs-full tolerance is 16 x eps x sqrt(V) with eps that of
float32 (or of the row's dtype if coarser: a float64 row derived from the float32 model
keeps float32 rounding): 6.1e-5 nats at V=1024, 1.7e-4 at V=8192 (worth < 1e-4 bpb).
"""
from __future__ import annotations

import math

import numpy as np

from evalkit.audit.result import FAIL, INCONCLUSIVE, PASS, CheckResult, docs_of, where
from evalkit.audit.subject import Run
from evalkit.engine.context import EvalData

SUM_TOL = 1e-9  # |sum p - 1| of a float64 row (float64 rounding over 8192 terms is < 2e-12)
_EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps),
        "bfloat16": 2.0 ** -7, "float16": float(np.finfo(np.float16).eps)}


def fast_tolerance(vocab: int, dtype: str = "float32") -> float:
    """Nats allowed between the fast path's log p(x_t) and the float64 row's. Never tighter
    than float32's: the model's log-softmax is float32 (ctx.log_probs), and a float64 row a
    strategy derives from it keeps that rounding."""
    return 16.0 * max(_EPS.get(dtype, _EPS["float32"]), _EPS["float32"]) * math.sqrt(vocab)


def check_normalization(base: Run, data: EvalData, probes: np.ndarray, vocab: int) -> CheckResult:
    tol = fast_tolerance(vocab)
    tried = (f"full float64 distribution at {len(probes)} positions: |sum p - 1| <= {SUM_TOL:.0e}, and "
             f"|log p(x_t) - fast path| <= 16 eps(dtype) sqrt(V) = {tol:.1e} nats for float32 at V={vocab}")
    res = CheckResult("normalization", "C2", PASS, tried, positions=len(probes), docs=docs_of(data, probes),
                      runs=1, seconds=base.seconds)
    seen = [int(p) for p in probes if int(p) in base.probes]
    if not seen:
        res.status, res.detail = INCONCLUSIVE, "no probed position was scored"
        return res
    sums = {p: float(np.exp(base.probes[p].logp).sum()) for p in seen}
    fast = {p: abs(float(base.probes[p].logp[int(data.tokens[p])]) - base.probes[p].fast_logp) for p in seen}
    own = {p: float(np.exp(base.probes[p].own_logp).sum()) for p in seen if base.probes[p].own_logp is not None}
    worst = max(seen, key=lambda p: abs(sums[p] - 1.0))
    worst_fast = max(seen, key=lambda p: fast[p] / fast_tolerance(vocab, base.probes[p].fast_dtype))
    res.trials = [{"position": p, "sum_p": sums[p], "fast_diff": fast[p], "own_sum": own.get(p)} for p in seen]
    head = (f"worst sum p = {sums[worst]:.9f} (|Δ| {abs(sums[worst] - 1):.3e}, expected 1 ± {SUM_TOL:.0e}) "
            f"at {where(data, worst)}")
    if own:
        ow = max(own, key=lambda p: abs(own[p] - 1.0))
        head += f"; the mixer's own distribution: worst sum {own[ow]:.9f} at {where(data, ow)}"
    elif any(base.mixer_stats):
        head += "; the mixer's own distribution is not exposed (mixer.own_distribution), only the combined one"
    worst_tol = fast_tolerance(vocab, base.probes[worst_fast].fast_dtype)
    tail = f"; worst |fast - full| = {fast[worst_fast]:.3e} nats at {where(data, worst_fast)}"
    if abs(sums[worst] - 1.0) > SUM_TOL:
        res.status = FAIL
        res.detail = f"C2 normalization: not a distribution: {head}{tail}"
    elif fast[worst_fast] > worst_tol:
        p = worst_fast
        res.status = FAIL
        res.detail = (f"C2 normalization: {where(data, p)}: the fast path scored log p(x_t) = "
                      f"{base.probes[p].fast_logp:.9g}, its full distribution gives "
                      f"{float(base.probes[p].logp[int(data.tokens[p])]):.9g} (|Δ| {fast[p]:.3e} > {worst_tol:.1e}); "
                      f"{head}")
    else:
        res.detail = head + tail
    missing = [int(p) for p in probes if int(p) not in base.probes]
    if missing and res.status == PASS:
        res.detail += f"; {len(missing)} probed positions never scored"
    return res
