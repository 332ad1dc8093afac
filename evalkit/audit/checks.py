"""The legality checks of `python -m evalkit.audit`, one function per rule group.

Each check reads runs of the real engine (`evaluate`) on the audited stream: the plain
run, and re-runs on COPIES of the tokens with one target (or one whole document)
replaced. Every re-run starts from fresh state: a deep copy of the model, a new strategy
object and the same torch seed, so any difference between two runs is caused by the
replaced tokens and nothing else. Checks return a `CheckResult`; on failure its detail
names the first offending position with the expected and the observed numbers.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from evalkit.engine.cost import DEFAULT_UTILIZATION, EVAL_LIMIT_S, H100_BF16_FLOPS, RANKS, gpu_seconds
from evalkit.model.artifact import SIZE_CAP
from evalkit.data.tokenizer import BOS_ID
from evalkit.data.shards import ByteTable
from evalkit.engine.context import EvalData
from evalkit.engine.loop import Result, evaluate
from evalkit.engine.ledger import Ledger, LedgerViolation
from evalkit.model.gpt import GPT, estimate_forward_flops

NORM_TOL = 1e-6  # |sum p - 1| and |log p_full(x_t) - log p_fast(x_t)| (nats) at a probe
CUDA_ATOL = 1e-3  # nats: bf16 autocast and unordered CUDA reductions are not batch-invariant


@dataclass
class CheckResult:
    name: str
    rule: str  # legality.md ids, e.g. "C1,C3"
    passed: bool | None  # None: not applicable (e.g. isolation not claimed)
    tried: str  # what the check did, in one line
    detail: str = ""  # on failure: first offending position, expected vs got

    @property
    def status(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


@dataclass
class Run:
    """One engine run: its ledger, or the LedgerViolation the engine raised."""

    result: Result | None
    ledger: Ledger | None
    error: str = ""
    flops: float = 0.0
    train_tokens: int = 0  # tokens that went through a forward pass with gradients on


@dataclass
class Subject:
    """What is audited: a strategy factory (fresh object per run) and an optional mixer."""

    label: str
    make: Callable[[], object]
    model: GPT
    info: object  # evalkit.dist.DistInfo
    mixer_spec: str | None = None
    seed: int = 1337
    code_files: list[str] = field(default_factory=list)  # plugin sources counted against the cap

    def claims_isolation(self) -> bool:
        # A cache over the whole split links documents, whatever the window plan claims.
        return bool(getattr(self.make(), "claims_doc_isolation", False)) and not self.mixer_spec


def run_strategy(subject: Subject, data: EvalData, probes: frozenset[int] = frozenset()) -> Run:
    """Evaluate once from fresh state, counting model FLOPs with a hook on the embedding
    (every forward, however a strategy calls the model, starts there)."""
    model = copy.deepcopy(subject.model)  # strategies may train the weights (TTT, warm-ups)
    torch.manual_seed(subject.seed)
    strategy = subject.make()
    counts = {"flops": 0.0, "train": 0}

    def hook(_mod, inputs, _out) -> None:
        shape = inputs[0].shape
        T = shape[-1] if len(shape) else 1
        n = int(inputs[0].numel())
        f = estimate_forward_flops(model.cfg, n, (T + 1) / 2)  # causal: mean span (T+1)/2
        if torch.is_grad_enabled():
            f *= 3  # forward + backward of a training step
            counts["train"] += n
        counts["flops"] += f

    handle = model.tok_emb.register_forward_hook(hook)
    try:
        result, ledger = evaluate(model, data, strategy, subject.info, subject.mixer_spec,
                                  probe_positions=probes, progress=False)
        return Run(result, ledger, flops=counts["flops"], train_tokens=counts["train"])
    except LedgerViolation as e:
        return Run(None, None, error=str(e), flops=counts["flops"])
    finally:
        handle.remove()


# -- choosing what to perturb ----------------------------------------------------------
def sample_positions(data: EvalData, n: int, seed: int) -> np.ndarray:
    """n targets spread evenly over the stream (so over documents and over the run,
    late positions included, where caches and adapters have learned): one per bin."""
    hi = data.n_tokens
    n = max(1, min(n, hi - 1))
    edges = np.linspace(1, hi, n + 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    picks = [int(rng.integers(a, max(a + 1, b))) for a, b in zip(edges[:-1], edges[1:])]
    return np.unique(np.clip(picks, 1, hi - 1))


def _bigram_hit(tokens: np.ndarray, t: int, a: int) -> bool:
    prev = tokens[:t - 1] == tokens[t - 1]
    return bool(np.any(tokens[1:t][prev] == a))


def perturb_positions(data: EvalData, k: int, first_window: int) -> list[int]:
    """k targets to replace: one inside the first window (catches warm-ups and peeks at
    the start), the rest spread over the stream, each moved to the nearest position whose
    bigram already occurred in the prefix (a cache hit, where target-keyed tricks act)."""
    tokens, n = data.tokens, data.n_tokens
    ok = np.ones(n, bool)
    ok[0] = False
    ok[tokens == BOS_ID] = False  # never replace a BOS: document boundaries stay put
    ok[np.maximum(data.doc_starts + 1, 0).clip(max=n - 1)] = False  # the first target has no prefix
    want = [min(max(2, first_window // 2), n - 1)] + [int(n * (i + 1) / (k + 1)) for i in range(k - 1)]
    chosen: list[int] = []
    for w in want:
        order = np.argsort(np.abs(np.arange(n) - w), kind="stable")
        cands = [int(p) for p in order[:512] if ok[p] and p not in chosen]
        hits = [p for p in cands[:256] if _bigram_hit(tokens, p, int(tokens[p]))]
        if hits or cands:
            chosen.append((hits or cands)[0])
    return sorted(chosen)


def replacement(tokens: np.ndarray, t: int, vocab: int, table: ByteTable | None) -> int:
    """A token that differs from x_t as much as we can tell: the opposite bigram-cache
    status (a miss for a hit, a seen follower for a miss) and a byte length on the other
    side of the median, so gates keyed on the target's cache hit or length flip."""
    x, prev = int(tokens[t]), tokens[:t - 1] == tokens[t - 1]
    followers = np.unique(tokens[1:t][prev].astype(np.int64))
    is_hit = np.zeros(vocab, bool)
    is_hit[followers] = True
    cand = ~is_hit if is_hit[x] else is_hit
    cand[[x, BOS_ID]] = False
    if table is not None:
        cand &= ~table.is_boundary
    if not cand.any():
        cand = np.ones(vocab, bool)
        cand[[x, BOS_ID]] = False
    ids = np.flatnonzero(cand)
    if table is None:  # no byte table: the first candidate half the alphabet away
        return int(ids[np.argmin((ids - x - vocab // 2) % vocab)])
    # bytes charged after x_{t-1}; jump to the far side of the median so thresholds flip
    charged = table.base_bytes.astype(np.int64) + (table.leading_space & ~table.is_boundary[int(tokens[t - 1])])
    median = float(np.median(charged[~table.is_boundary]))
    return int(ids[np.argmin(charged[ids])] if charged[x] >= median else ids[np.argmax(charged[ids])])


def perturbed(data: EvalData, positions: np.ndarray, new: np.ndarray, table: ByteTable | None) -> EvalData:
    """A copy of `data` with tokens replaced (never a BOS); bytes recomputed when we can,
    so a strategy reading the target's byte count sees the new token's."""
    tokens = data.tokens.copy()
    tokens[positions] = new
    target_bytes = table.target_bytes(tokens) if table is not None else data.target_bytes
    return EvalData(tokens, target_bytes, data.doc_starts.copy(), source=data.source + " (perturbed)")


def document_body(data: EvalData, k: int) -> np.ndarray:
    """Positions of document k's tokens after its BOS, up to (not including) the next BOS."""
    s = int(data.doc_starts[k])
    e = int(data.doc_starts[k + 1]) if k + 1 < len(data.doc_starts) else data.n_tokens
    return np.arange(s + 1, e, dtype=np.int64)


# -- the checks -------------------------------------------------------------------------
def _not_run(name: str, rule: str, tried: str, run: Run) -> CheckResult:
    return CheckResult(name, rule, False, tried, f"could not run: the strategy stopped with: {run.error}")


def check_normalization(base: Run, data: EvalData, probes: np.ndarray) -> CheckResult:
    tried = f"full distribution at {len(probes)} positions spread over the stream: sum p = 1 and p(x_t) = fast path"
    if base.ledger is None:
        return _not_run("normalization", "C2", tried, base)
    missing = [int(p) for p in probes if int(p) not in base.ledger.probes]
    seen = sorted(p for p in (int(p) for p in probes) if p in base.ledger.probes)
    sums = {p: float(np.exp(base.ledger.probes[p].logp).sum()) for p in seen}
    worst = (0.0, "")
    for p in seen:
        pr, total = base.ledger.probes[p], sums[p]
        full = float(pr.logp[int(data.tokens[p])])
        if not abs(total - 1.0) <= NORM_TOL:
            far = max(sums, key=lambda q: abs(sums[q] - 1.0))
            return CheckResult("normalization", "C2", False, tried,
                               f"position {p}: sum over the alphabet of p = {total:.6g} (expected 1 ± {NORM_TOL:g}); "
                               f"furthest: position {far}, sum p = {sums[far]:.6g}")
        if not abs(full - pr.fast_logp) <= NORM_TOL:
            return CheckResult("normalization", "C2", False, tried,
                               f"position {p}: fast path scored log p = {pr.fast_logp:.9g}, its full distribution "
                               f"gives {full:.9g} (expected equal ± {NORM_TOL:g})")
        worst = max(worst, (abs(total - 1.0), f"max |sum p - 1| = {abs(total - 1.0):.1e}"))
    if missing:
        return CheckResult("normalization", "C2", False, tried,
                           f"position {missing[0]} (and {len(missing) - 1} more) was never scored, so no distribution")
    return CheckResult("normalization", "C2", True, tried, worst[1])


def check_target_independence(base: Run, reruns: dict[int, tuple[int, Run]], atol: float) -> CheckResult:
    tried = (f"replaced x_t at {len(reruns)} positions {sorted(reruns)} and re-ran: the distribution at t "
             "must not move")
    if base.ledger is None:
        return _not_run("target independence", "C1,C5", tried, base)
    for t, (new, run) in sorted(reruns.items()):
        if run.ledger is None:
            return _not_run("target independence", "C1,C5", tried, run)
        a, b = base.ledger.probes.get(t), run.ledger.probes.get(t)
        if a is None or b is None:
            return CheckResult("target independence", "C1,C5", False, tried, f"position {t} was never scored")
        diff = np.abs(a.logp - b.logp)
        if not (diff <= atol).all():
            j = int(np.argmax(diff))
            return CheckResult("target independence", "C1,C5", False, tried,
                               f"position {t}: with x_t = {new} instead of the real token, log p_t({j}) = "
                               f"{b.logp[j]:.9g}, expected {a.logp[j]:.9g} (the distribution read the target)")
    detail = "bitwise equal" if atol == 0 else f"|Δ| <= {atol:g}"
    return CheckResult("target independence", "C1,C5", True, tried, detail)


def _first_moved(base: Ledger, run: Ledger, mask: np.ndarray, atol: float) -> int | None:
    moved = mask & ~(np.abs(base.nll - run.nll) <= atol)
    if not moved.any():
        return None
    idx = np.flatnonzero(moved)
    return int(idx[np.argmin(base.score_event[idx])])


def check_causality(base: Run, reruns: dict[int, tuple[int, Run]], doc_run: tuple[int, Run] | None,
                    data: EvalData, atol: float) -> CheckResult:
    what = f"replaced x_t at {sorted(reruns)}" + (f" and all of document {doc_run[0]}" if doc_run else "")
    tried = what + ": every score fixed before the change's first score must not move"
    if base.ledger is None:
        return _not_run("causality", "C1,C3", tried, base)
    cases = [(f"x_{t} replaced by {new}", np.array([t]), run) for t, (new, run) in sorted(reruns.items())]
    if doc_run:
        cases.append((f"document {doc_run[0]} replaced", document_body(data, doc_run[0]), doc_run[1]))
    ev = base.ledger.score_event
    for desc, changed, run in cases:
        if run.ledger is None:
            return _not_run("causality", "C1,C3", tried, run)
        first = ev[changed][ev[changed] >= 0]
        if first.size == 0:
            continue
        before = (ev >= 0) & (ev < first.min())
        p = _first_moved(base.ledger, run.ledger, before, atol)
        if p is not None:
            return CheckResult("causality", "C1,C3", False, tried,
                               f"{desc}: position {p}, scored {int(first.min() - ev[p])} scores earlier, moved: "
                               f"nll {run.ledger.nll[p]:.9g}, expected {base.ledger.nll[p]:.9g} "
                               "(state learned from a token before it was scored)")
    return CheckResult("causality", "C1,C3", True, tried, "bitwise equal" if atol == 0 else f"|Δ| <= {atol:g}")


def check_ledger(base: Run, data: EvalData, decoded_bytes: int | None) -> CheckResult:
    tried = "engine ledger: each target scored once, no early learning read, random-only warm-ups, byte total"
    if base.ledger is None:
        return CheckResult("ledger", "C3,C4,C9", False, tried, f"the engine refused: {base.error}")
    led, res = base.ledger, base.result
    cov = led.coverage()
    if cov["rescored"] or cov["unscored"]:
        first = int(np.argmax(led.score_count[1:] != 1)) + 1
        return CheckResult("ledger", "C3,C4,C9", False, tried,
                           f"position {first} scored {int(led.score_count[first])} times (expected 1); "
                           f"{cov['unscored']} of {cov['targets']} targets unscored, {cov['rescored']} rescored")
    bad = [w for w in led.warmups if w["source"] != "random"]
    if bad:
        return CheckResult("ledger", "C3,C4,C9", False, tried,
                           f"warm-up by {bad[0]['strategy']} read {bad[0]['tokens']} tokens from {bad[0]['source']!r} "
                           "(expected random tokens only)")
    split_bytes = int(data.target_bytes[1:].sum())
    if res.bytes != split_bytes:
        return CheckResult("ledger", "C3,C4,C9", False, tried,
                           f"byte total {res.bytes:,} != the split's {split_bytes:,}")
    if decoded_bytes is not None and decoded_bytes != split_bytes:
        return CheckResult("ledger", "C3,C4,C9", False, tried,
                           f"byte table gives {split_bytes:,} bytes, the decoded UTF-8 text has {decoded_bytes:,}")
    extra = " = decoded UTF-8" if decoded_bytes is not None else ""
    return CheckResult("ledger", "C3,C4,C9", True, tried,
                       f"{cov['scored_once']:,} targets once, {split_bytes:,} bytes{extra}, "
                       f"{int(led.learn_count.sum()):,} learning reads")


def check_isolation(base: Run, doc_run: tuple[int, Run] | None, data: EvalData, claimed: bool,
                    atol: float, why_not: str = "") -> CheckResult:
    tried = "replaced one whole document: no score in any other document may move"
    if not claimed:
        return CheckResult("doc isolation", "C10", None, "not claimed" + (f" ({why_not})" if why_not else ""))
    if doc_run is None:
        return CheckResult("doc isolation", "C10", None, "needs 2 or more documents in the audited stream")
    if base.ledger is None or doc_run[1].ledger is None:
        return _not_run("doc isolation", "C10", tried, base if base.ledger is None else doc_run[1])
    k, run = doc_run
    other = data.doc_of_target() != k
    p = _first_moved(base.ledger, run.ledger, other & (base.ledger.score_event >= 0), atol)
    if p is not None:
        d = int(data.doc_of_target()[p])
        return CheckResult("doc isolation", "C10", False, tried.replace("one whole", f"document {k} as a"),
                           f"position {p} in document {d} moved: nll {run.ledger.nll[p]:.9g}, expected "
                           f"{base.ledger.nll[p]:.9g} (state leaked across a BOS)")
    return CheckResult("doc isolation", "C10", True, tried.replace("one whole", f"document {k} as a"), "")


@dataclass
class Budget:
    artifact_bytes: int
    code_bytes: int
    flops: float
    audited_tokens: int
    full_tokens: int
    cpu_seconds: float

    @property
    def projected_s(self) -> float:
        """FLOPs scaled to the full split / (8 H100 x bf16 peak x utilization)."""
        scale = self.full_tokens / max(self.audited_tokens, 1)
        return gpu_seconds(self.flops * scale)


def check_budget(b: Budget) -> CheckResult:
    total = b.artifact_bytes + b.code_bytes
    cpu_full = b.cpu_seconds * b.full_tokens / max(b.audited_tokens, 1)
    tried = (f"artifact {b.artifact_bytes:,} + code {b.code_bytes:,} = {total:,} B (cap {SIZE_CAP:,}); "
             f"{b.flops:.3g} FLOPs on {b.audited_tokens:,} tokens -> {b.full_tokens:,}-token split on "
             f"{RANKS}xH100 at {DEFAULT_UTILIZATION:.0%} of {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s: "
             f"{b.projected_s:.1f} s (limit {EVAL_LIMIT_S:.0f} s); this CPU single-process: {cpu_full:,.0f} s")
    if total > SIZE_CAP:
        return CheckResult("budget", "C8", False, tried, f"{total:,} bytes > {SIZE_CAP:,} by {total - SIZE_CAP:,}")
    if not math.isfinite(b.projected_s) or b.projected_s > EVAL_LIMIT_S:
        return CheckResult("budget", "C8", False, tried, f"projected {b.projected_s:.0f} s > {EVAL_LIMIT_S:.0f} s")
    return CheckResult("budget", "C8", True, tried, "")
