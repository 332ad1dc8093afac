"""`flat` and `sliding`: the model's own distribution, window by window.

The plan's order is the canonical order (`learning_order`): the node's n-gram cache learns
the targets in it, whatever --batch-windows is and whichever rank scores them. Batches are
dealt to ranks round-robin; every score is the one-process one (the cache's aux comes from
the one timeline, and a window's logits do not depend on its batch-mates: evalkit.model.gpt).
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.engine.overlap import HostScorer
from evalkit.strategies.registry import DEFAULT_BATCH_WINDOWS, Strategy, register
from evalkit.engine.windows import Window, plan_doc_isolated, plan_flat, plan_sliding


class WindowStrategy(Strategy):
    fixed_model = True  # windows only read the model: ablate feeds one pass to several mixers
    scores_in_stream_order = True  # windows in stream order: an n-gram context may cross a BOS

    def plan(self, data) -> list[Window]:
        raise NotImplementedError

    def learning_order(self, data) -> np.ndarray:
        """int64 targets in the order an n-gram cache learns them: the plan's."""
        return scored_positions(self.plan(data))

    def run(self, ctx) -> None:
        ctx.model.set_context_len(self.opts.seq_len)
        windows = self.plan(ctx.data)
        run_windows(ctx, windows, self.opts.batch_windows or DEFAULT_BATCH_WINDOWS)

    def warmup(self, ctx) -> None:
        """One model call of a full batch on random tokens, before the clock starts."""
        ctx.model.set_context_len(self.opts.seq_len)
        with torch.inference_mode():
            ctx.log_probs(ctx.warmup_tokens((self.opts.batch_windows or DEFAULT_BATCH_WINDOWS, self.opts.seq_len)))


def scored_positions(windows: list[Window]) -> np.ndarray:
    """int64 targets the windows score, in plan order (the order the cache learns them)."""
    if not windows:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(w.score_from, w.end, dtype=np.int64) for w in windows])


def run_windows(ctx, windows: list[Window], batch_windows: int) -> None:
    """Score `windows` in batches; rank r scores batches r, r + world, ... The model runs
    here while a host thread scores the previous batch (evalkit/engine/overlap.py)."""
    info = ctx.info
    batches = [windows[i:i + batch_windows] for i in range(0, len(windows), batch_windows)]
    total = sum(w.end - w.score_from for w in windows)
    with ctx.progress(total, ctx.strategy_name) as bar, torch.inference_mode(), HostScorer(ctx) as host:
        for k, batch in enumerate(batches):
            if k % info.world_size == info.rank:
                positions, logp = batch_log_probs(ctx, batch)
                host.submit(positions, logp)
            bar.update(sum(w.end - w.score_from for w in batch))


def batch_log_probs(ctx, batch: list[Window]) -> tuple[np.ndarray, torch.Tensor]:
    """One model call over right-padded windows: the positions it scores and their (n, V)
    log-probs. The head and log-softmax run on the scored rows only (1/32 of them at seq
    2048 stride 64)."""
    idx = ctx.inputs_batch([(w.start, w.end) for w in batch])  # (B, T)
    T = idx.size(1)
    rows = np.concatenate([j * T + np.arange(w.score_from - w.start, w.length) for j, w in enumerate(batch)])
    logp = ctx.log_probs(idx, rows=ctx.to_device(rows))  # (n, V)
    positions = scored_positions(batch)
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
