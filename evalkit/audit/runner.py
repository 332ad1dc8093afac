"""One audit of one strategy: runs of the real engine, compared by the checks.

Order: a base run without probes (source files traced for the budget); if the strategy
learns but took too few learning steps, the audited stream grows (the strategy's own
batch size decides how long it must be); targets are chosen from that run's ledger; the
base again WITH probes (determinism: the two must agree); then one re-run per changed
target (stopped as soon as every score it is compared on is fixed), three whole-document
replacements (full runs: isolation and stream-causality), and the two suffix tests.
`audit()` returns one `CheckResult` per check; command.py and selftest.py print them.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from evalkit.audit.bookkeeping import (MIN_CYCLES, check_determinism, check_isolation, check_ledger, check_state,
                                      stable_mask)
from evalkit.audit.budget import budget_of, check_budget
from evalkit.audit.causality import Case, before_region, check_causality, check_target_independence, stream_causality
from evalkit.audit.normalization import check_normalization
from evalkit.audit.positions import (choose_targets, document_body, perturbed, replace_many, replacement,
                                     suffix_sets, window_bounds)
from evalkit.audit.result import CheckResult, locate
from evalkit.audit.subject import Run, Subject, run_strategy
from evalkit.data.shards import ByteTable
from evalkit.engine.context import EvalData
from evalkit.engine.cost import split_size
from evalkit.engine.report import markdown_table
from evalkit.errors import EvalkitError
from evalkit.strategies.plugins import load_plugin, plugin_file
from evalkit.strategies.registry import build_strategy

CUDA_ATOL = 1e-3  # nats: bf16 autocast and unordered CUDA reductions are not batch-invariant
CHECKS = ["determinism", "ledger", "normalization", "target independence", "causality", "suffix",
          "doc isolation", "state exercised", "stream-causal", "budget"]
MAX_FACTOR = 16  # the audited stream grows to at most 16x the documents, each 16x longer


@dataclass
class Options:
    effort: int = 1  # 1 default, 3 --thorough: denser targets and phases
    time_budget: float | None = None  # s: no new single-target re-run starts after this (None: all)
    max_targets: int | None = None  # at most this many single-target re-runs (a load-independent cap)
    probes: int = 128  # normalization probes spread over the stream
    artifact_bytes: int = 0
    split_tokens: int | None = None
    doc_lengths: np.ndarray | None = None  # per-document tokens of the real split (budget)


@dataclass
class Audit:
    checks: list[CheckResult]
    data: EvalData
    seconds: float
    factor: int  # the stream's growth factor (documents x f, each f x longer) to exercise the state


def spread(data: EvalData, n: int, seed: int) -> np.ndarray:
    """n positions spread evenly over the stream (one per bin, seeded), no BOS."""
    hi = data.n_tokens
    edges = np.linspace(1, hi, max(1, min(n, hi - 1)) + 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    picks = np.array([int(rng.integers(a, max(a + 1, b))) for a, b in zip(edges[:-1], edges[1:])])
    return np.unique(np.clip(picks, 1, hi - 1))


def _needs_more(run: Run) -> int:
    """Tokens the stream needs so that the state learns MIN_CYCLES + 1 times (0: enough)."""
    calls = len(run.ledger.learn_events)
    stateful = bool(run.mixer_stats) or calls > 0
    if not stateful or calls > MIN_CYCLES:
        return 0
    per_call = max(int(run.ledger.learn_count.sum()) // max(calls, 1), run.ledger.n_tokens // max(calls, 1))
    return (MIN_CYCLES + 1) * per_call + per_call // 2


def base_run(subject: Subject, make_stream: Callable[[int], EvalData]) -> tuple[Run, EvalData, int]:
    """The first base run, on a stream long enough for the state to learn several times
    (the strategy's own batch size decides: one learning call per 256 windows needs a long
    stream). Grows by the factor the last run's learning calls imply, at least 2x."""
    factor = 1
    data = make_stream(factor)
    run = run_strategy(subject, data, trace_code=True)
    while run.ok and (need := _needs_more(run)) and factor < MAX_FACTOR:
        f = min(MAX_FACTOR, max(2 * factor, factor * math.ceil(math.sqrt(need / data.n_tokens))))
        bigger = make_stream(f)
        if bigger.n_tokens <= data.n_tokens:
            break
        factor, data = f, bigger
        run = run_strategy(subject, data, trace_code=True)
    return run, data, factor


def _skipped(reason: str) -> list[CheckResult]:
    return [CheckResult(name, "-", "skipped", "not run", f"the base run failed, so this check was not run: {reason}")
            for name in CHECKS if name != "ledger"]


def audit(subject: Subject, make_stream: Callable[[int], EvalData], table: ByteTable | None,
          opts: Options, decoded: Callable[[EvalData], int | None] = lambda d: None) -> Audit:
    t0 = time.perf_counter()
    vocab = subject.model.cfg.vocab_size
    atol = 0.0 if subject.info.device.type == "cpu" else CUDA_ATOL
    base0, data, factor = base_run(subject, make_stream)
    if not base0.ok:
        led = check_ledger(base0, data, None) if base0.ledger is not None else None
        head = CheckResult("ledger", "C3,C4,C9", "FAIL", "the base run",
                           f"the base run failed: {locate(data, base0.error)}")
        rows = [led if led is not None and led.passed is False else head] + _skipped(base0.error)
        return Audit(rows, data, time.perf_counter() - t0, factor)
    strategy = subject.make()
    stride = int(getattr(getattr(strategy, "opts", None), "stride", 0) or 64)
    targets = choose_targets(data, base0.ledger, window_bounds(strategy, data), stride, opts.effort, subject.seed)
    tpos = np.array([t.position for t in targets], dtype=np.int64)
    probes = np.union1d(spread(data, opts.probes * opts.effort, subject.seed), tpos)
    base = run_strategy(subject, data, frozenset(int(p) for p in probes))
    third = None
    if base.ok and (~stable_mask(base, base0, atol) & (base.ledger.score_event >= 0)).any():
        third = run_strategy(subject, data)
    det = check_determinism(base, base0, third, data, atol)
    if not base.ok:
        return Audit([det] + _skipped(base.error), data, time.perf_counter() - t0, factor)
    stable = stable_mask(base, base0, atol)
    state, learned = check_state(base, data, tpos)
    docs = _documents(subject, data, vocab, table)
    suffix = [_suffix(subject, data, base, what, pos, new, table)
              for what, pos, new in suffix_sets(data, vocab, table, opts.effort, subject.seed)]
    singles, skipped = [], []
    for t in targets:  # in priority order, every coverage class early; the time budget cuts the tail
        over_time = opts.time_budget is not None and time.perf_counter() - t0 > opts.time_budget and singles
        if over_time or (opts.max_targets is not None and len(singles) >= opts.max_targets):
            skipped.append(t)
            continue
        singles.append((t, _single(subject, data, base, t.position, vocab, table)))
    tried = (f"replaced x_t alone at {len(singles)} positions and {len(docs)} whole documents (first, middle, last): "
             "no score fixed before the change may move")
    causal = check_causality("causality", "C1,C3", tried, base, [c for _, c in singles] + docs, data, stable, atol,
                             learned)
    what = "; ".join(c.what[:-len(" replaced")] for c in suffix)
    suffix_row = check_causality("suffix", "C4,C1", f"replaced, one run each: {what}: every score fixed before "
                                 "the replaced tokens must not move", base, suffix, data, stable, atol, learned)
    claimed = subject.claims_isolation()
    checks = [det, check_ledger(base, data, decoded(data)),
              check_normalization(base, data, probes, vocab),
              check_target_independence(base, singles, data, stable, atol, learned, skipped),
              causal, suffix_row,
              check_isolation(base, docs, data, claimed, atol, stable,
                              "an n-gram cache spans the whole split" if subject.mixer_spec else ""),
              state, stream_causality([causal, suffix_row], data)]
    base.code = base0.code  # traced in the probe-less run: tracing slows the mixer timing
    # mixer time from the fastest full run: the first pays numba's compile, the probed one
    # the slow distribution path; the document runs are full, warm and unprobed
    warm = [c.run.mixer_seconds for c in docs if c.run.ok]
    base.mixer_seconds = min([base0.mixer_seconds, base.mixer_seconds] + warm)
    budget = budget_of(base, subject.model.cfg, strategy.config(), opts.artifact_bytes,
                       opts.split_tokens or split_size(vocab, data.n_tokens), opts.doc_lengths, subject.code_files)
    checks.append(check_budget(budget))
    return Audit(checks, data, time.perf_counter() - t0, factor)


def _single(subject: Subject, data: EvalData, base: Run, t: int, vocab: int, table) -> Case:
    new = replacement(data.tokens, t, vocab, table)
    changed = np.array([t], dtype=np.int64)
    stop = before_region(base.ledger, changed)
    stop[t] = True
    run = run_strategy(subject, perturbed(data, changed, np.array([new]), table), frozenset({t}), stop_after=stop)
    return Case(f"x_{t} replaced by {new}", changed, np.array([new]), run)


def _documents(subject: Subject, data: EvalData, vocab: int, table) -> list[Case]:
    n = len(data.doc_starts)
    if n < 2:
        return []
    out = []
    for k in sorted({0, (n - 1) // 2, n - 1}):
        body = document_body(data, k)
        if body.size == 0:
            continue
        new = replace_many(data, body, vocab, table)
        out.append(Case(f"document {k} replaced", body, new, run_strategy(subject, perturbed(data, body, new, table))))
    return out


def _suffix(subject: Subject, data: EvalData, base: Run, what: str, pos: np.ndarray, new: np.ndarray,
            table) -> Case:
    stop = before_region(base.ledger, pos)
    run = run_strategy(subject, perturbed(data, pos, new, table), stop_after=stop if stop.any() else None)
    return Case(what + " replaced", pos, new, run)


def print_checks(label: str, result: Audit, note: str = "") -> None:
    data = result.data
    grown = (f", grown {result.factor}x the documents, each {result.factor}x longer, so the state learns "
             f"{MIN_CYCLES + 1}+ times" if result.factor > 1 else "")
    print(f"audit of {label} on {data.n_tokens:,} tokens in {len(data.doc_starts)} documents{grown} "
          f"({note or data.source}), {result.seconds:.1f} s")
    rows = [{"check": c.name, "rule": c.rule, "result": c.status, "tried": c.tried,
             "n": f"{c.positions} pos / {c.docs} docs / {c.runs} runs / {c.seconds:.1f} s", "detail": c.detail}
            for c in result.checks]
    print(markdown_table(rows, [("check", "check", ""), ("rule", "rule", ""), ("result", "result", ""),
                                ("tried", "what was tried", ""), ("n", "tried on", ""),
                                ("detail", "first offence / numbers", "")]))


def make_subject(args: argparse.Namespace, loaded, info) -> Subject:
    if len(args.ngram) > 1:
        raise EvalkitError(f"--ngram given {len(args.ngram)} times: audit one combination at a time")
    spec = args.ngram[0] if args.ngram else None
    if args.plugin:
        cls = load_plugin(args.plugin)
        make, label, files = (lambda: cls(args)), f"{args.plugin}", [str(plugin_file(args.plugin))]
    else:
        build_strategy(args.strategy, args)  # fail fast on an unknown name
        make, label, files = (lambda: build_strategy(args.strategy, args)), args.strategy, []
    return Subject(label + (f"+{spec}" if spec else ""), make, loaded.model, info, spec, args.seed, files)
