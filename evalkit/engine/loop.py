"""The engine: run one strategy over the split, through the ledger, into a result.

Data flows one way: model -> (strategy's window plan) -> log-probs -> mixer (n-gram
cache) -> ledger -> per-document sums -> `Result`. Strategies drive the loop; the engine
gives them an `EvalContext` whose `score`, `after_scoring` and
`tokens_for_learning` are the only doors to the ledger, so every built-in is score-first
by construction and the audit can check it. Warm-ups (kernel compile, the model on
random tokens) run before the clock and are reported as `compile_seconds`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evalkit.cli import flush_notes
from evalkit.engine.dist import DistInfo, all_reduce_sum, barrier
from evalkit.errors import EvalkitError
from evalkit.engine.ledger import Ledger, LedgerViolation
from evalkit.model.gpt import GPT
from evalkit.engine.context import EvalContext, EvalData
from evalkit.engine import nodetable, probes


@dataclass
class Result:
    """One strategy's outcome over the split; `per_doc_*` keep the pairing for ablations."""

    label: str
    val_loss: float  # mean NLL per scored token, nats
    val_bpb: float  # bits per byte over the scored targets
    tokens: int
    bytes: int
    seconds: float
    coverage: dict
    config: dict
    per_doc_nll: np.ndarray  # float64 (D,) nats
    per_doc_bytes: np.ndarray  # int64 (D,)
    per_doc_tokens: np.ndarray  # int64 (D,)
    mixer_memory_bytes: int = 0
    compile_seconds: float = 0.0  # kernel compile/load and model warm-up on random tokens, before the clock
    mixer_stats: dict | None = None  # positions, acted, hint_right summed over ranks (n-gram mixers)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict:
        return {"strategy": self.label, "val_loss": self.val_loss, "val_bpb": self.val_bpb,
                "tokens": self.tokens, "bytes": self.bytes, "seconds": self.seconds,
                "tokens_per_s": self.tokens_per_s, "coverage": self.coverage, "config": self.config,
                "mixer_memory_bytes": self.mixer_memory_bytes, "compile_seconds": self.compile_seconds,
                **mixer_fields(self.mixer_stats)}


def mixer_fields(stats: dict | None) -> dict:
    """Where the cache acted and how often its hint was the target, for tables and JSON."""
    if not stats:
        return {}
    n, acted, right = stats["positions"], stats["acted"], stats["hint_right"]
    return {"ngram_stats": stats, "ngram_acted": acted / n if n else 0.0,
            "ngram_hint_right": right / acted if acted else 0.0}


def gather_mixer_stats(mixer, info: DistInfo) -> dict | None:
    if mixer is None or not hasattr(mixer, "stats"):
        return None
    keys = ("positions", "acted", "hint_right")
    local = mixer.stats()
    total = all_reduce_sum(np.array([local[k] for k in keys], np.int64), info)
    return {k: int(v) for k, v in zip(keys, total)}


def reduce_result(ctx: EvalContext, label: str, seconds: float, config: dict) -> Result:
    """Sum the ledger over ranks (float64) into per-document totals and the headline."""
    data, info, ledger = ctx.data, ctx.info, ctx.ledger
    ledger.check_settled(label)  # a fixed score whose number never came would count as 0
    counts = all_reduce_sum(ledger.score_count, info)
    check_cache_timelines(ctx, label)
    doc = data.doc_of_target()
    n_docs = len(data.doc_starts)
    local_nll = np.bincount(doc, weights=ledger.nll, minlength=n_docs)
    per_doc_nll = all_reduce_sum(local_nll, info)
    scored = counts > 0
    per_doc_bytes = np.bincount(doc[scored], weights=data.target_bytes[scored], minlength=n_docs).astype(np.int64)
    per_doc_tokens = np.bincount(doc[scored], minlength=n_docs).astype(np.int64)
    total_bytes, total_tokens = int(per_doc_bytes.sum()), int(per_doc_tokens.sum())
    nll = float(per_doc_nll.sum())
    if (counts > 1).any():
        raise LedgerViolation(f"C4 single pass: {label} scored position {int(np.argmax(counts > 1))} "
                              "on more than one rank")
    merged = Ledger(data.n_tokens)
    merged.score_count = counts.astype(np.int32)
    coverage = merged.coverage()
    return Result(label=label, val_loss=nll / max(total_tokens, 1),
                  val_bpb=nll / math.log(2) / max(total_bytes, 1), tokens=total_tokens, bytes=total_bytes,
                  seconds=seconds, coverage=coverage, config=config, per_doc_nll=per_doc_nll,
                  per_doc_bytes=per_doc_bytes, per_doc_tokens=per_doc_tokens,
                  mixer_memory_bytes=cache_memory(ctx), mixer_stats=gather_mixer_stats(ctx.mixer or ctx.table, info))


def cache_memory(ctx: EvalContext) -> int:
    """Bytes of this process's n-gram table (0 on a rank that only reads the node's table)."""
    cache = ctx.mixer if ctx.mixer is not None else ctx.table
    return int(cache.memory_bytes()) if cache is not None else 0


def check_cache_timelines(ctx: EvalContext, label: str) -> None:
    """C3 across ranks for the node's one cache (Ledger.check_node_timeline); a process's
    own cache was checked as it learned (Ledger.check_learn)."""
    if ctx.table is None or ctx.mixer is not None:
        return
    merged = all_reduce_sum(ctx.ledger.cache_seq, ctx.info, "max")
    shared = ctx.table.shared
    ctx.ledger.check_node_timeline(merged, shared.steps, shared.rows.step, label)


def make_scorers(model: GPT, data: EvalData, strategy, specs: list[str | None],
                 info: DistInfo) -> list[tuple[object, object]]:
    """(mixer, table) per spec: the node's one table (evalkit.engine.nodetable) for every
    run; this process's own bound mixer while the audit captures probes (it reads full
    distributions from the cache's state at the moment: one process) or for a strategy
    with no `learning_order` in one process; (None, None) for None."""
    wanted = [s for s in specs if s]
    if not wanted:
        return [(None, None)] * len(specs)
    own = probes.active() is not None or not hasattr(strategy, "learning_order")
    if own and info.distributed:
        raise EvalkitError(f"--ngram with {strategy.label} under torchrun: the strategy needs a "
                           "learning_order(data) method (the int64 positions in the order a cache learns them; "
                           "evalkit/strategies/plugins.py) so that one process per node can hold the table")
    starts = context_start(data, strategy)
    if own:
        return [(make_mixer(model, data, s, starts), None) if s else (None, None) for s in specs]
    if info.is_main:
        announce_compile()
    tables = iter(nodetable.open_tables(wanted, model.cfg.vocab_size, data.tokens, starts,
                                        lambda: strategy.learning_order(data), info, strategy.label))
    return [(None, next(tables)) if s else (None, None) for s in specs]


def context_start(data: EvalData, strategy) -> np.ndarray | None:
    """How far back an n-gram context of each position may read: the whole stream (None)
    for a strategy that scores documents in stream order (`scores_in_stream_order`), else
    each target's own document. Why: a strategy that scores a document before the one in
    front of it (TTT's longest-first queue, documents scored side by side in one batch) has
    not yet scored that document's tail, so a context reaching into it would read tokens
    before they are scored (the audit's suffix check caught it on real text)."""
    return None if getattr(strategy, "scores_in_stream_order", False) else data.context_starts()


def make_mixer(model: GPT, data: EvalData, spec: str | None, starts: np.ndarray | None = None):
    """The n-gram mixer for `--ngram spec`, bound to the split (None without a spec);
    `starts`: see `context_start`."""
    if not spec:
        return None
    from caches.mixer import parse_ngram_spec  # caches knows no torch; import on demand

    try:
        mixer = parse_ngram_spec(model.cfg.vocab_size, spec)
    except ValueError as e:  # caches raises CacheSpecError(ValueError) for bad specs, already "--ngram SPEC: ..."
        raise EvalkitError(str(e)) from None
    announce_compile()
    mixer.bind(data.tokens, starts)
    return mixer


_ANNOUNCED = False


def announce_compile() -> None:
    """Numba compiles the n-gram kernels on their first call and caches them on disk; say so
    before the first run's silent minute rather than after it."""
    global _ANNOUNCED
    if _ANNOUNCED:
        return
    _ANNOUNCED = True
    import caches.kernels as kernels

    where = os.environ.get("NUMBA_CACHE_DIR")
    root = Path(where) if where else Path(kernels.__file__).parent / "__pycache__"
    cached = root.is_dir() and any(root.rglob("kernels.*.nbi"))
    if not cached:
        print(f"compiling n-gram kernels (first run only, cached in {root}) ...", file=sys.stderr, flush=True)


def mixer_label(strategy, mixer) -> str:  # mixer: a mixer or a node table (both have a name)
    return strategy.label + (f"+{mixer.name}" if mixer is not None else "")


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def warm_up(strategy, ctx, model: GPT, device: torch.device, kernels: bool) -> float:
    """Seconds spent before the clock: compiling (or loading) the cache kernels when
    `kernels`, and the strategy's own warm-up of the model on random tokens (`ctx.warmup_tokens`)."""
    model.eval()

    def body() -> None:
        if kernels:
            from caches.store import warmup  # caches knows no torch; import on demand

            warmup()
        if hasattr(strategy, "warmup"):  # user plugins may have none
            strategy.warmup(ctx)

    return _timed(body, device)


def run_timed(strategy, ctx, model: GPT, device: torch.device, tables: list = ()) -> float:
    """Wall seconds of `strategy.run(ctx)`, CUDA work included, with the node tables' passes
    (started with the clock, joined before it stops)."""
    model.eval()

    def body() -> None:
        nodetable.start(list(tables))
        strategy.run(ctx)
        nodetable.join(list(tables))

    return _timed(body, device)


def run_config(strategy, spec: str | None, info: DistInfo) -> dict:
    return {"strategy": strategy.config(), "ngram": spec, "world_size": info.world_size,
            "device": str(info.device.type)}


def evaluate(model: GPT, data: EvalData, strategy, info: DistInfo, mixer_spec: str | None = None,
             progress: bool = True) -> tuple[Result, Ledger]:
    """Run `strategy` (evalkit.strategies.Strategy) with an optional n-gram mixer: warm up
    outside the clock, then time the run."""
    (mixer, table), = make_scorers(model, data, strategy, [mixer_spec], info)
    try:
        flush_notes()  # the inputs passed every check: now the informational lines (threads, warnings)
        label = mixer_label(strategy, mixer or table)
        ledger = Ledger(data.n_tokens)
        ctx = EvalContext(model, data, ledger, label, info, mixer, progress, table)
        compile_seconds = warm_up(strategy, ctx, model, info.device, kernels=runs_kernels(mixer, table))
        ready(info, [table])
        seconds = run_timed(strategy, ctx, model, info.device, [table])
        result = reduce_result(ctx, label, seconds, run_config(strategy, mixer_spec, info))
    finally:
        nodetable.close([table])
    result.compile_seconds = compile_seconds
    return result, ledger


def ready(info: DistInfo, tables: list) -> None:
    """With node tables, every rank starts its clock once the owners have compiled (or
    loaded) the kernels: a rank's clock would otherwise count the owner's compile."""
    if any(t is not None for t in tables):
        barrier(info)


def runs_kernels(mixer, table) -> bool:
    """Whether this process runs the n-gram kernels (compiles them before the clock): its
    own mixer, or the node's table when it is the owner."""
    return mixer is not None or (table is not None and table.owner)
