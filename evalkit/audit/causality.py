"""Rules C1, C3, C4, C5 by perturbation: target independence, score-first causality, the
suffix tests, and (reported, not required) stream-causality.

The one comparison rule (docs/legality.md, "Score-first and stream-causal"): when changing
the tokens at a set S moves the score at p, that is a violation only if p was scored before
every changed token was: in an earlier `ctx.score` call, or in the call that scored the
earliest change, earlier in the stream than that change AND passed before it. One call
is one event, so reordering a call's positions is no offence; but a mixer learns each
position right after scoring it, in the order passed (protocol v2), so a change passed
before p may legally reach p. Moves anywhere else are legal context. Moves at p earlier
in the stream than every change, scored after it, are legal score-first but make the
strategy not stream-causal: reported separately. Positions whose scores differed between
two identical runs are not compared (bookkeeping.py): they would blame the perturbation
for noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.audit.positions import Target
from evalkit.audit.result import FAIL, INCONCLUSIVE, NA, PASS, CheckResult, docs_of, where
from evalkit.audit.subject import Run
from evalkit.engine.context import EvalData
from evalkit.engine.ledger import Ledger


@dataclass
class Case:
    """One re-run: what was changed (positions, new tokens), and the run."""

    what: str
    changed: np.ndarray
    new: np.ndarray
    run: Run


def before_region(ledger: Ledger, changed: np.ndarray) -> np.ndarray:
    """bool (N,): positions scored before every position in `changed` (score-first order)."""
    ev = ledger.score_event
    ce = ev[changed]
    if changed.size == 0 or (ce < 0).all():
        return np.zeros(ev.size, bool)
    e_min = int(ce[ce >= 0].min())
    first = changed[ce == e_min]
    t_min, o_min = int(first.min()), int(ledger.score_order[first].min())
    pos = np.arange(ev.size)
    same = (ev == e_min) & (pos < t_min) & (ledger.score_order < o_min)
    region = (ev >= 0) & ((ev < e_min) | same)
    region[changed] = False  # their targets differ: compared as distributions, not scores
    return region


def moved(base: Run, run: Run, mask: np.ndarray, atol: float) -> np.ndarray:
    """Positions in `mask` scored in both runs whose NLL differs by more than atol."""
    both = mask & (run.ledger.score_event >= 0)
    diff = np.abs(base.ledger.nll - run.ledger.nll)
    return np.flatnonzero(both & ~(diff <= atol))


def _outcome(case: Case, base: Run, data: EvalData, stable: np.ndarray, atol: float) -> dict:
    """Compare one re-run with the base run: violations and stream-order moves."""
    out = {"changed": case.what, "positions": case.changed[:64].tolist(), "n_changed": int(case.changed.size),
           "run_seconds": round(case.run.seconds, 3), "stopped_early": case.run.stopped}
    if not case.run.ok:
        out.update(outcome="error", error=case.run.error)
        return out
    region = before_region(base.ledger, case.changed) & stable
    bad = moved(base, case.run, region, atol)
    later = np.zeros(stable.size, bool)
    later[:int(case.changed.min())] = True
    later &= stable & ~region & (base.ledger.score_event >= 0)
    nonstream = moved(base, case.run, later, atol)
    out.update(compared=int(region.sum()), violations=int(bad.size), outcome="moved" if bad.size else "unchanged",
               not_stream_causal=int(nonstream.size))
    if bad.size:
        p = int(bad[np.argmin(base.ledger.score_event[bad])])
        ev = base.ledger.score_event
        when = "in the same call, earlier in the stream" if ev[p] == ev[case.changed].min() else "in an earlier call"
        out.update(first=p, detail=f"{case.what}: {where(data, p)}, scored {when}, moved: "
                   f"nll {case.run.ledger.nll[p]:.9g}, expected {base.ledger.nll[p]:.9g} "
                   f"(|Δ| {abs(case.run.ledger.nll[p] - base.ledger.nll[p]):.3e}): its score depends on a token "
                   "scored after it")
    if nonstream.size:
        out["stream_example"] = f"{case.what} moved {where(data, int(nonstream[0]))}, earlier in the stream"
    return out


def check_target_independence(base: Run, trials: list[tuple[Target, Case]], data: EvalData,
                              stable: np.ndarray, atol: float, learned: bool | None,
                              skipped: list[Target] = ()) -> CheckResult:
    """The full distribution at t must not move when only x_t changes (C1, C5)."""
    rule, name = "C1,C5", "target independence"
    tried = f"replaced x_t alone at {len(trials)} positions and re-ran: the full distribution at t must not move"
    res = CheckResult(name, rule, PASS, tried, positions=len(trials), runs=len(trials),
                      docs=docs_of(data, [t.position for t, _ in trials]),
                      seconds=sum(c.run.seconds for _, c in trials))
    first_fail = None
    for target, case in trials:
        t = target.position
        row = {"position": t, "where": where(data, t), "why": target.why, "replaced_by": int(case.new[0]),
               "original": int(data.tokens[t])}
        a, b = base.probes.get(t), case.run.probes.get(t) if case.run.ok else None
        if not case.run.ok:
            row.update(outcome="error", error=case.run.error)
        elif a is None or b is None:
            row.update(outcome="not scored")
        elif not stable[t]:
            row.update(outcome="skipped: differs between identical runs")
        else:
            diff = np.abs(a.logp - b.logp)
            row.update(max_diff=float(diff.max()), outcome="moved" if not (diff <= atol).all() else "unchanged")
            if row["outcome"] == "moved" and first_fail is None:
                j = int(np.argmax(diff))
                first_fail = (f"C1 causality / C5 oracle: {where(data, t)} ({target.why}): with x_t = {case.new[0]} "
                              f"instead of {int(data.tokens[t])}, log p_t({j}) = {b.logp[j]:.9g}, expected "
                              f"{a.logp[j]:.9g} (|Δ| {diff[j]:.3e}): the distribution read the target")
        res.trials.append(row)
    if first_fail:
        res.status, res.detail = FAIL, first_fail
    elif not any(r.get("outcome") in ("moved", "unchanged") for r in res.trials):
        res.status, res.detail = INCONCLUSIVE, "no perturbed position could be compared"
    else:
        res.detail = _summary(res.trials, atol, learned)
        if learned is False:
            res.status = INCONCLUSIVE
    if skipped:
        res.detail += f"; {len(skipped)} more targets left out by the time or count cap"
        res.trials += [{"position": t.position, "why": t.why, "outcome": "not run: cap"} for t in skipped]
    return res


def _summary(trials: list[dict], atol: float, learned: bool | None) -> str:
    n = sum(1 for r in trials if r.get("outcome") == "unchanged")
    eq = "bitwise equal" if atol == 0 else f"|Δ| <= {atol:.1e}"
    tail = "; the state never learned before them: INCONCLUSIVE" if learned is False else ""
    return f"{n} of {len(trials)} unchanged ({eq}){tail}"


def check_causality(name: str, rule: str, tried: str, base: Run, cases: list[Case], data: EvalData,
                    stable: np.ndarray, atol: float, learned: bool | None) -> CheckResult:
    """Every score fixed before a change was scored must not move (C1, C3; C4 for suffixes)."""
    res = CheckResult(name, rule, PASS, tried, runs=len(cases), seconds=sum(c.run.seconds for c in cases))
    res.positions = int(sum(c.changed.size for c in cases))
    res.docs = docs_of(data, np.unique(np.concatenate([c.changed for c in cases])) if cases else [])
    if not cases:
        res.status, res.detail = NA, "nothing to change"
        return res
    res.trials = [_outcome(c, base, data, stable, atol) for c in cases]
    fails = [t for t in res.trials if t.get("outcome") == "moved"]
    errors = [t for t in res.trials if t.get("outcome") == "error"]
    compared = sum(t.get("compared", 0) for t in res.trials)
    if fails:
        res.status, res.detail = FAIL, f"{rule.split(',')[0]}: " + fails[0]["detail"]
    elif errors:
        res.status, res.detail = FAIL, f"{errors[0]['changed']}: the run stopped: {errors[0]['error']}"
    elif compared == 0:
        res.status, res.detail = INCONCLUSIVE, "no score was fixed before any change: nothing to compare"
    else:
        eq = "bitwise equal" if atol == 0 else f"|Δ| <= {atol:.1e}"
        res.detail = f"{compared:,} scores fixed before the changes compared over {len(cases)} runs, all {eq}"
        if learned is False:
            res.status = INCONCLUSIVE
            res.detail += "; the state never learned before them: INCONCLUSIVE"
    return res


def stream_causality(results: list[CheckResult], data: EvalData) -> CheckResult:
    """Reported, not required: does any score depend on a LATER token in the stream (legal
    when that token was scored first: a reordered document queue with shared state)?"""
    examples = [t["stream_example"] for r in results for t in r.trials if t.get("not_stream_causal")]
    runs = sum(1 for r in results for t in r.trials if "compared" in t)
    tried = ("from the same re-runs: did a change move a score EARLIER in the stream (scored after the change)? "
             "informational: score-first is the rule, stream-causal is stricter")
    if examples:
        return CheckResult("stream-causal", "info", "no", tried,
                           "score-first but not stream-causal: " + examples[0], runs=runs)
    return CheckResult("stream-causal", "info", "yes", tried,
                       f"no score moved by a later token in {runs} re-runs", runs=runs)
