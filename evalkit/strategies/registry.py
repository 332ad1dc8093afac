"""The strategy registry: `@register("name")` and `build_strategy(name, opts)`.

A strategy is a class with `name`, `__init__(opts)`, `label`, `claims_doc_isolation`,
`config()` and `run(ctx)`, and optionally `warmup(ctx)` (run before the clock, on
`ctx.warmup_tokens` only); `run` scores every target through `ctx.score` and lets state
learn only through `ctx.after_scoring` / `ctx.tokens_for_learning` (evalkit.engine). With
an n-gram cache it also needs `learning_order(data)`: the int64 targets in the order the
cache learns them (its plan's one-process order; the node's one table learns in it, and
the ledger checks that each rank scores in it).
User strategies implement the same protocol and reach the audit with `--plugin`.
Adding a strategy never touches the engine loop.
"""
from __future__ import annotations

import argparse
from typing import Callable

from evalkit.errors import EvalkitError

REGISTRY: dict[str, type] = {}
_ARG_HOOKS: list[Callable[[argparse.ArgumentParser], None]] = []


def register(name: str):
    """Class decorator: make a strategy available as `--strategy name`."""
    def wrap(cls):
        if name in REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        if hasattr(cls, "add_args") and cls.add_args not in _ARG_HOOKS:
            _ARG_HOOKS.append(cls.add_args)
        return cls
    return wrap


class Strategy:
    """Base class with the common window options; subclasses implement `run`."""

    name = ""
    fixed_model = False  # True: the model never changes while it runs, so one pass may feed several mixers
    # True: documents are scored in stream order (every token before t is scored before t), so
    # an n-gram context may run across a document boundary; False (the safe default): contexts
    # stay inside their document (evalkit.engine.loop.context_start)
    scores_in_stream_order = False

    def __init__(self, opts: argparse.Namespace):
        self.opts = opts

    @property
    def label(self) -> str:
        return self.name + ("(doc)" if getattr(self.opts, "doc_isolated", False) else "")

    @property
    def claims_doc_isolation(self) -> bool:
        """True when no score depends on another document (rule C10 applies)."""
        return bool(getattr(self.opts, "doc_isolated", False))

    def config(self) -> dict:
        return {"name": self.name, **{k: getattr(self.opts, k) for k in COMMON_KEYS if hasattr(self.opts, k)}}

    def run(self, ctx) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


COMMON_KEYS = ("seq_len", "stride", "batch_windows", "doc_isolated", "drop_tail")
# --batch-windows when nothing resolved it (evalkit.flags.prepare sizes it per device: this on CPU)
DEFAULT_BATCH_WINDOWS = 16


def add_common_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("windows (all strategies)")
    g.add_argument("--seq-len", type=int, default=None,
                   help="context length per window (default: the artifact's train_seq_len)")
    g.add_argument("--stride", type=int, default=64, help="sliding: new targets scored per window (default 64)")
    g.add_argument("--batch-windows", type=int, default=None,
                   help="windows per model call (default: 16 on CPU; on CUDA sized from free device memory)")
    g.add_argument("--doc-isolated", action="store_true", help="never attend across a BOS (claims rule C10)")
    g.add_argument("--drop-tail", action="store_true",
                   help="flat: drop the targets that do not fill a window, as the baseline script does")
    for hook in _ARG_HOOKS:
        hook(parser)


def strategy_class(name: str) -> type:
    """A registered strategy, or a user plugin given as 'FILE.py:NAME' (strategies/plugins.py)."""
    from evalkit.strategies.plugins import is_spec, load_plugin

    if is_spec(name):
        return load_plugin(name)
    if name not in REGISTRY:
        raise EvalkitError(f"--strategy {name}: unknown; choose from {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def build_strategy(name: str, opts: argparse.Namespace):
    return strategy_class(name)(opts)


def check_window_opts(opts: argparse.Namespace) -> None:
    if opts.seq_len < 1:
        raise EvalkitError(f"--seq-len {opts.seq_len}: must be >= 1")
    if not 1 <= opts.stride <= opts.seq_len:
        raise EvalkitError(f"--stride {opts.stride}: must be between 1 and --seq-len ({opts.seq_len})")
    if opts.batch_windows < 1:
        raise EvalkitError(f"--batch-windows {opts.batch_windows}: must be >= 1")

