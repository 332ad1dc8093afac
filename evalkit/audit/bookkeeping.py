"""Checks read from the ledger and the runs' counters: determinism, the ledger itself
(C3, C4, C9), document isolation (C10) and whether the state was exercised at all.

Determinism: the base run is made twice, once with probes and once without. On CPU the
two must be bitwise equal; positions that differ are reported as their own verdict and
left out of every perturbation comparison (a difference there is noise, not a leak). If
they differ, a third run without probes tells noise (the two probe-less runs differ too)
from behaviour that depends on being probed (they agree): the latter is a FAIL.
"""
from __future__ import annotations

import numpy as np

from evalkit.audit.result import FAIL, INCONCLUSIVE, NA, NONDETERMINISTIC, PASS, CheckResult, docs_of, locate, where
from evalkit.audit.subject import Run
from evalkit.engine.context import EvalData

MIN_CYCLES = 4  # learning steps the state must have taken before the probed positions


def stable_mask(a: Run, b: Run, atol: float) -> np.ndarray:
    """bool (N,): positions scored alike in two identical runs."""
    both = (a.ledger.score_event >= 0) & (b.ledger.score_event >= 0)
    return both & (np.abs(a.ledger.nll - b.ledger.nll) <= atol)


def check_determinism(base: Run, again: Run, third: Run | None, data: EvalData, atol: float) -> CheckResult:
    tried = "the base run twice, with and without probes: scores must be bitwise equal on CPU"
    res = CheckResult("determinism", "-", PASS, tried, positions=data.n_tokens - 1, docs=len(data.doc_starts),
                      runs=2 + (third is not None), seconds=again.seconds + (third.seconds if third else 0.0))
    if not again.ok:
        res.status, res.detail = FAIL, f"the second identical run stopped: {again.error}"
        return res
    diff = np.flatnonzero(~stable_mask(base, again, atol) & (base.ledger.score_event >= 0))
    if diff.size == 0:
        res.detail = "bitwise equal" if atol == 0 else f"|Δ| <= {atol:.1e}"
        return res
    first = f"first at {where(data, int(diff[0]))}: {base.ledger.nll[diff[0]]:.9g} vs {again.ledger.nll[diff[0]]:.9g}"
    if third is not None and third.ok and not np.flatnonzero(~stable_mask(again, third, atol)
                                                                & (again.ledger.score_event >= 0)).size:
        res.status = FAIL
        res.detail = (f"audit-aware: {diff.size} positions differ between the run with probes and two identical "
                      f"runs without, which agree with each other; {first}")
        return res
    res.status = NONDETERMINISTIC
    res.detail = (f"nondeterministic: {diff.size} positions differ between two identical runs ({first}); "
                  "they are left out of every perturbation comparison")
    return res


def check_ledger(base: Run, data: EvalData, decoded_bytes: int | None) -> CheckResult:
    tried = "engine ledger: each target scored once, no early learning read, random-only warm-ups, byte total"
    res = CheckResult("ledger", "C3,C4,C9", PASS, tried, positions=data.n_tokens - 1, docs=len(data.doc_starts),
                      runs=1, seconds=base.seconds)
    if base.error.startswith(("C3", "C4")):
        res.status, res.detail = FAIL, f"the engine refused: {locate(data, base.error)}"
        return res
    led, result = base.ledger, base.result
    cov = led.coverage()
    if cov["rescored"] or cov["unscored"]:
        first = int(np.argmax(led.score_count[1:] != 1)) + 1
        res.status = FAIL
        res.detail = (f"C4 single pass: {where(data, first)} scored {int(led.score_count[first])} times (expected 1); "
                      f"{cov['unscored']} of {cov['targets']} targets unscored, {cov['rescored']} rescored")
        return res
    bad = [w for w in led.warmups if w["source"] != "random"]
    if bad:
        res.status = FAIL
        res.detail = (f"C3 score before update: warm-up by {bad[0]['strategy']} read {bad[0]['tokens']} tokens from "
                      f"{bad[0]['source']!r} (expected random tokens only)")
        return res
    split_bytes = int(data.target_bytes[1:].sum())
    if result.bytes != split_bytes:
        res.status, res.detail = FAIL, f"C9 metric: byte total {result.bytes:,} != the split's {split_bytes:,}"
    elif decoded_bytes is not None and decoded_bytes != split_bytes:
        res.status = FAIL
        res.detail = f"C9 metric: byte table gives {split_bytes:,} bytes, the decoded UTF-8 text has {decoded_bytes:,}"
    else:
        extra = " = decoded UTF-8" if decoded_bytes is not None else ""
        res.detail = (f"{cov['scored_once']:,} targets once, {split_bytes:,} bytes{extra}, "
                      f"{int(led.learn_count.sum()):,} learning reads in {len(led.learn_events)} calls")
    return res


def check_isolation(base: Run, doc_cases: list, data: EvalData, claimed: bool, atol: float,
                    stable: np.ndarray, why_not: str = "") -> CheckResult:
    tried = "replaced whole documents: no score in any other document may move"
    if not claimed:
        return CheckResult("doc isolation", "C10", NA, "not claimed" + (f" ({why_not})" if why_not else ""))
    res = CheckResult("doc isolation", "C10", PASS, tried, runs=len(doc_cases),
                      positions=int(sum(c.changed.size for c in doc_cases)), docs=len(doc_cases),
                      seconds=sum(c.run.seconds for c in doc_cases))
    if not doc_cases:
        res.status, res.detail = NA, "needs 2 or more documents in the audited stream"
        return res
    owner = data.doc_of_target()
    for c in doc_cases:
        k = int(owner[c.changed[0]])
        row = {"changed": c.what, "outcome": "unchanged"}
        if not c.run.ok:
            row.update(outcome="error", error=c.run.error)
            res.trials.append(row)
            res.status, res.detail = FAIL, f"{c.what}: the run stopped: {c.run.error}"
            continue
        other = (owner != k) & stable & (base.ledger.score_event >= 0) & (c.run.ledger.score_event >= 0)
        bad = np.flatnonzero(other & ~(np.abs(base.ledger.nll - c.run.ledger.nll) <= atol))
        if bad.size:
            p = int(bad[0])
            row.update(outcome="moved", first=p)
            if res.status == PASS:
                res.status = FAIL
                res.detail = (f"C10 isolation: {c.what}: {where(data, p)} moved: nll {c.run.ledger.nll[p]:.9g}, "
                              f"expected {base.ledger.nll[p]:.9g} (state leaked across a BOS)")
        res.trials.append(row)
    if res.status == PASS:
        res.detail = f"{len(doc_cases)} documents replaced, no score elsewhere moved"
    return res


def learning_before(base: Run, positions: np.ndarray) -> np.ndarray:
    """int (n,): learning calls other than the n-gram cache's (adapters, plug-in state) the
    strategy made before each position was scored."""
    led = base.ledger
    ev = np.setdiff1d(np.asarray(led.learn_events, dtype=np.int64), np.asarray(led.cache_learn_events, np.int64))
    return np.searchsorted(ev, led.score_event[positions])


def check_state(base: Run, data: EvalData, targets: np.ndarray) -> tuple[CheckResult, bool | None]:
    """How often the state learned and acted before the probed positions. Returns the row
    and `learned`: None for a stateless strategy (nothing to exercise), else whether each
    kind of state present took MIN_CYCLES learning steps before the median probed position:
    learning calls for adapters and other state, learned positions for the n-gram cache."""
    led = base.ledger
    calls = len(led.learn_events)
    has_mixer = bool(base.mixer_stats)
    stats = "; ".join(", ".join(f"{k}={v}" for k, v in s.items()) for s in base.mixer_stats)
    tried = ("learning calls (ctx.after_scoring / tokens_for_learning) and the n-gram cache's learned positions "
             "before the probed positions; mixer stats")
    res = CheckResult("state exercised", "C1,C3", PASS, tried, positions=int(targets.size),
                      docs=docs_of(data, targets))
    res.trials = [{"learn_calls": calls, "cache_learn_calls": len(led.cache_learn_events),
                   "learned_positions": int((led.learn_count > 0).sum()), "mixers": base.mixer_stats}]
    if calls == 0 and not has_mixer:
        res.status, res.detail = NA, "stateless as far as the ledger sees: no learning calls, no mixer"
        return res, None
    medians = _median_steps(base, targets)
    acted = [s for s in base.mixer_stats if "acted" in s]
    said = "; ".join(f"{m} {kind}" for kind, m in medians.items()) or "no learning steps"
    res.detail = (f"{calls} learning calls, {int((led.learn_count > 0).sum()):,} positions learned; median probed "
                  f"position had {said} before it" + (f"; {stats}" if stats else ""))
    if not medians or min(medians.values()) < MIN_CYCLES or (acted and all(int(s["acted"]) == 0 for s in acted)):
        res.status = INCONCLUSIVE
        res.detail = "the state barely learned or never acted before the probes: " + res.detail
        return res, False
    return res, True


def _median_steps(base: Run, targets: np.ndarray) -> dict[str, int]:
    """Median learning steps before the probed positions, per kind of state that learned.
    The n-gram cache's steps are the positions it learned before scoring each probe (its
    timeline, ledger.cache_seq), not calls: it learns token by token inside a call (score t,
    learn t, score t + 1), so one call over a whole split is thousands of steps."""
    led = base.ledger
    out = {}
    if len(led.learn_events) > len(led.cache_learn_events):
        before = learning_before(base, targets)
        out["learning calls"] = int(np.median(before)) if before.size else 0
    if (led.cache_seq >= 0).any():
        steps = led.cache_seq[targets]
        steps = steps[steps >= 0]  # -1: not scored through the cache
        out["positions learned by the n-gram cache"] = int(np.median(steps)) if steps.size else 0
    return out
