"""One model pass feeding several mixers: `evaluate_many`.

A window strategy's control flow does not depend on what it scores: the windows, the
batches and the model calls are fixed by the plan. So one run of the strategy can hand
the same (n, V) log-probs of every batch to several children, each an ordinary
`EvalContext` with its own mixer and its own `Ledger`, and each child's Result is the
one a separate `evaluate` would give, number for number (tests/test_ablate_fanout.py).

Strategies that learn (TTT) change the model between batches; whether they may share a
pass depends on them, so they get exactly one child here. `evaluate` is left untouched.
The children's n-gram caches are node tables (evalkit.engine.nodetable): mixers whose aux
agree (same orders, kind and gate, e.g. a sweep over beta) share one owner pass; a
child's `mixer_seconds` is its time in `score` without the waits for the pass, plus the
pass's own time (what the child's cache costs alone).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from evalkit.cli import flush_notes
from evalkit.engine.dist import DistInfo
from evalkit.engine.context import EvalContext, EvalData
from evalkit.engine import nodetable
from evalkit.engine.loop import (Result, make_scorers, mixer_label, reduce_result, run_config, run_timed,
                                 ready, runs_kernels, warm_up)
from evalkit.engine.ledger import Ledger
from evalkit.model.gpt import GPT


@dataclass
class FanoutRun:
    result: Result
    ledger: Ledger
    mixer_seconds: float  # this child's n-gram time: its scoring, plus its node table's pass


class FanoutContext(EvalContext):
    """The context the strategy sees: model calls once, scores and updates in every child."""

    def __init__(self, children: list[EvalContext], progress: bool):
        first = children[0]
        super().__init__(first.model, first.data, first.ledger, first.strategy_name, first.info, None, progress)
        self.children = children
        self.own_seconds = [0.0] * len(children)

    def _each(self, method: str, *args) -> list:
        """Call `method` on every child, timing each; the first child's answer is the
        strategy's (children differ only in their mixers, which no window plan reads)."""
        out = []
        for i, child in enumerate(self.children):
            t0 = time.perf_counter()
            out.append(getattr(child, method)(*args))
            self.own_seconds[i] += time.perf_counter() - t0
        return out

    def score(self, positions: np.ndarray, logp: torch.Tensor) -> np.ndarray:
        return self._each("score", positions, logp)[0]

    def fix_scores(self, positions: np.ndarray, logp: torch.Tensor, copy: bool = True):
        rows = logp.detach().clone() if copy else logp  # one copy, shared by the children
        return self._halves([c.fix_scores(positions, rows, copy=False) for c in self.children])

    def _halves(self, jobs: list):
        """Run every child's second half (timed as `_each` times a whole call); the first
        child's answer is the strategy's."""
        def run():
            out = []
            for i, job in enumerate(jobs):
                t0 = time.perf_counter()
                out.append(job())
                self.own_seconds[i] += time.perf_counter() - t0
            return out[0]
        return run

    def after_scoring(self, positions: np.ndarray) -> None:
        self._each("after_scoring", positions)

    def tokens_for_learning(self, positions: np.ndarray) -> np.ndarray:
        for child in self.children:
            child.ledger.check_learn(np.asarray(positions, dtype=np.int64), child.strategy_name)
        return self.data.tokens[np.asarray(positions, dtype=np.int64)]

    def warmup_tokens(self, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
        ids = super().warmup_tokens(shape, seed)  # recorded in the first child's ledger
        for child in self.children[1:]:
            child.ledger.record_warmup(child.strategy_name, "random", ids.numel())
        return ids


def evaluate_many(model: GPT, data: EvalData, strategy, info: DistInfo, mixer_specs: list[str | None],
                  progress: bool = True) -> list[FanoutRun]:
    """Run `strategy` once, scoring through one child per entry of `mixer_specs` (None = the
    model alone). Each child's `seconds` is the shared model time plus its own scoring time,
    what it would take alone; `mixer_seconds` is the part spent in its mixer."""
    if not mixer_specs:
        raise ValueError("evaluate_many needs at least one mixer spec (None for the model alone)")
    if len(mixer_specs) > 1 and not getattr(strategy, "fixed_model", False):
        raise ValueError(f"strategy {strategy.name!r} may change the model while it runs; "
                         "run it once per mixer")
    scorers = make_scorers(model, data, strategy, mixer_specs, info)  # specs with equal aux share one pass
    tables = [table for _, table in scorers]
    try:
        children = []
        for mixer, table in scorers:
            label = mixer_label(strategy, mixer or table)
            children.append(EvalContext(model, data, Ledger(data.n_tokens), label, info, mixer, False, table))
        ctx = FanoutContext(children, progress)
        flush_notes()  # the inputs passed every check: now the informational lines
        compile_seconds = warm_up(strategy, ctx, model, info.device,
                                  kernels=any(runs_kernels(m, t) for m, t in scorers))
        ready(info, tables)
        ctx.own_seconds = [0.0] * len(children)  # the warm-up is not the children's scoring time
        shared = run_timed(strategy, ctx, model, info.device, tables) - sum(ctx.own_seconds)
        runs = []
        for spec, child, own in zip(mixer_specs, children, ctx.own_seconds):
            result = reduce_result(child, child.strategy_name, shared + own, run_config(strategy, spec, info))
            result.compile_seconds = compile_seconds
            if child.table is not None:  # combining here + its pass on the owner's thread
                own = own - child.table.read_seconds + child.table.host_seconds()
            cached = child.mixer is not None or child.table is not None
            runs.append(FanoutRun(result, child.ledger, own if cached else 0.0))
    finally:
        nodetable.close(tables)
    return runs
