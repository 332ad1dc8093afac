"""`flat` and `sliding`: the model's own distribution, window by window.

Windows are batched globally first and then dealt to ranks round-robin, so every window
is computed in the same batch whatever the number of processes: N processes reproduce
the one-process result to float64 summation order.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from evalkit.engine.overlap import HostScorer
from evalkit.strategies.registry import DEFAULT_BATCH_WINDOWS, Strategy, register
from evalkit.engine.windows import Window, plan_doc_isolated, plan_flat, plan_sliding


class WindowStrategy(Strategy):
    fixed_model = True  # windows only read the model: ablate feeds one pass to several mixers

    def plan(self, data) -> list[Window]:
        raise NotImplementedError

    def run(self, ctx) -> None:
        windows = self.plan(ctx.data)
        run_windows(ctx, windows, self.opts.batch_windows or DEFAULT_BATCH_WINDOWS)


def run_windows(ctx, windows: list[Window], batch_windows: int) -> None:
    """Score `windows` in batches; each rank takes every world_size-th batch. Every rank
    makes the same number of steps (some empty) so shared mixers stay in lockstep. The
    model runs here while a host thread scores the previous batch (evalkit/engine/overlap.py)."""
    info = ctx.info
    batches = [windows[i:i + batch_windows] for i in range(0, len(windows), batch_windows)]
    steps = math.ceil(len(batches) / info.world_size)
    total = sum(w.end - w.score_from for w in windows)
    with ctx.progress(total, ctx.strategy_name) as bar, torch.inference_mode(), HostScorer(ctx) as host:
        for step in range(steps):
            k = step * info.world_size + info.rank
            positions, logp = batch_log_probs(ctx, batches[k]) if k < len(batches) else (np.zeros(0, np.int64), None)
            host.submit(positions, logp)  # ctx.score, then ctx.after_scoring, in this order
            bar.update(positions.size * info.world_size)


def batch_log_probs(ctx, batch: list[Window]) -> tuple[np.ndarray, torch.Tensor]:
    """One model call over right-padded windows: the positions it scores and their (n, V)
    log-probs. The head and log-softmax run on the scored rows only (1/32 of them at seq
    2048 stride 64)."""
    idx = ctx.inputs_batch([(w.start, w.end) for w in batch])  # (B, T)
    T = idx.size(1)
    rows = np.concatenate([j * T + np.arange(w.score_from - w.start, w.length) for j, w in enumerate(batch)])
    logp = ctx.log_probs(idx, rows=ctx.to_device(rows))  # (n, V)
    positions = np.concatenate([np.arange(w.score_from, w.end, dtype=np.int64) for w in batch])
    return positions, logp


@register("flat")
class Flat(WindowStrategy):
    """Non-overlapping windows of seq_len; each window starts with no context."""

    def plan(self, data) -> list[Window]:
        if self.opts.doc_isolated:
            return plan_doc_isolated(data.doc_starts, data.n_tokens, self.opts.seq_len, self.opts.seq_len)
        return plan_flat(data.n_tokens, self.opts.seq_len, self.opts.drop_tail)


@register("sliding")
class Sliding(WindowStrategy):
    """Overlapping windows: each target (after the first window) sees seq_len - stride or
    more tokens of context."""

    def plan(self, data) -> list[Window]:
        if self.opts.doc_isolated:
            return plan_doc_isolated(data.doc_starts, data.n_tokens, self.opts.seq_len, self.opts.stride)
        return plan_sliding(data.n_tokens, self.opts.seq_len, self.opts.stride)
