"""Shared machinery of the gallery's window strategies: score a batch of windows with a
hook that may rewrite the rows (the trick each entry plays) before they are scored."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from evalkit.engine.windows import Window

# (ctx, positions (n,), rows (n, V) float32 log-probs, window of each row (n,)) -> rows
Transform = Callable[[object, np.ndarray, torch.Tensor, np.ndarray], torch.Tensor]


def batch_rows(ctx, batch: list[Window]) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """(positions (n,), log-probs (n, V), window index inside the batch (n,)) of one model call."""
    T = max(w.length for w in batch)
    idx = torch.zeros((len(batch), T), dtype=torch.long, device=ctx.device)  # (B, T), right padded
    for j, w in enumerate(batch):
        idx[j, :w.length] = ctx.inputs(w.start, w.end)
    logp = ctx.log_probs(idx)  # (B, T, V)
    rows = torch.cat([logp[j, w.score_from - w.start:w.length] for j, w in enumerate(batch)])
    positions = np.concatenate([np.arange(w.score_from, w.end, dtype=np.int64) for w in batch])
    which = np.concatenate([np.full(w.end - w.score_from, j) for j, w in enumerate(batch)])
    return positions, rows, which


def run_transformed(ctx, windows: list[Window], batch_windows: int, transform: Transform) -> None:
    """Score `windows` batch by batch, rows rewritten by `transform`; the mixer (if any) learns after."""
    with torch.inference_mode():
        for i in range(0, len(windows), batch_windows):
            positions, rows, which = batch_rows(ctx, windows[i:i + batch_windows])
            ctx.score(positions, transform(ctx, positions, rows, which))
            ctx.after_scoring(positions)


def true_token_tilt(ctx, positions: np.ndarray, rows: torch.Tensor, mask: np.ndarray, b: float = 2.0) -> torch.Tensor:
    """Rows tilted towards the TRUE target where `mask` (a normalized distribution that read x_t)."""
    out = rows.clone()
    sel = np.flatnonzero(mask)
    if sel.size:
        y = torch.from_numpy(ctx.data.tokens[positions[sel]].astype(np.int64))
        out[sel, y] += b
        out[sel] = torch.log_softmax(out[sel], dim=-1)
    return out
