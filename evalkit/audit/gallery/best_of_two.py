"""ILLEGAL (rule C4): keeping the better of two passes, per document or per position.

Public cases: min-NLL over TTT epochs (PR #568, #573); choosing per document which pass
to report. `PerDocBestOfTwo`: pass A is the model smoothed half and half with the uniform
distribution, pass B the model mixed half and half with a unigram cache of the
document's already-scored tokens (each pass legal on its own); it computes both over a
whole document and scores the document with the pass whose total NLL is lower: a
document's early scores then depend on its later tokens. The suffix tests (replace the
second half of documents) move them and FAIL it.
`PerPositionBestOfTwo` keeps, at each position, the better of the model and the model at
temperature 2 for the target: the distribution at t depends on x_t, and target
independence FAILS it.
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.audit.gallery.windows import batch_rows, run_transformed
from evalkit.engine.windows import plan_doc_isolated
from evalkit.strategies.sliding import Sliding

TEMPERATURE = 2.0


def hot(rows: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(rows / TEMPERATURE, dim=-1)


def target_logp(ctx, positions: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
    y = torch.from_numpy(ctx.data.tokens[positions].astype(np.int64)).to(rows.device)
    return rows.gather(1, y[:, None])[:, 0]


def cache_pass(ctx, positions: np.ndarray, rows: torch.Tensor) -> torch.Tensor:
    """0.5 model + 0.5 add-0.1 unigram of the document's tokens before each position."""
    V = rows.shape[1]
    order = np.argsort(positions, kind="stable")
    seen = torch.zeros(V)
    q = torch.empty_like(rows)
    for i in order:
        q[i] = (seen + 0.1) / (seen.sum() + 0.1 * V)
        seen[int(ctx.data.tokens[positions[i]])] += 1.0
    return torch.log(0.5 * rows.exp() + 0.5 * q)


class PerDocBestOfTwo(Sliding):
    name = "gallery:best-of-two-per-document"

    def run(self, ctx) -> None:
        o = self.opts
        windows = plan_doc_isolated(ctx.data.doc_starts, ctx.data.n_tokens, o.seq_len, o.stride)
        by_doc: dict[int, list] = {}
        for w in windows:
            by_doc.setdefault(int(np.searchsorted(ctx.data.doc_starts, w.score_from - 1, side="right")), []).append(w)
        with torch.inference_mode():
            for doc in sorted(by_doc):
                positions, rows, _ = batch_rows(ctx, by_doc[doc])  # the whole document in one call
                a = torch.log(0.5 * rows.exp() + 0.5 / rows.shape[1])
                b = cache_pass(ctx, positions, rows)
                better_b = target_logp(ctx, positions, b).sum() > target_logp(ctx, positions, a).sum()
                ctx.score(positions, b if better_b else a)


class PerPositionBestOfTwo(Sliding):
    name = "gallery:best-of-two-per-position"

    def run(self, ctx) -> None:
        def best(ctx, positions, rows, _which):
            b = hot(rows)
            pick_b = target_logp(ctx, positions, b) > target_logp(ctx, positions, rows)
            return torch.where(pick_b[:, None], b, rows)

        run_transformed(ctx, self.plan(ctx.data), self.opts.batch_windows, best)
