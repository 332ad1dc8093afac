"""LEGAL strategies the audit must PASS, written to trip a careless audit.

`ReorderedCall`: sliding windows, each call's positions handed to `ctx.score` in reverse
order (as a gather across ranks may). `DynamicDocOrder`: per-document windows, documents
claimed in an order drawn fresh each run (as multi-GPU schedulers do), one document per
call; claims document isolation. `NegativeTilt`: a normalized tilt away from the bigram
cache's hint token with an entropy-driven, negative strength; the cache learns only
after scoring (through the ledger), in stream order.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from evalkit.audit.gallery.windows import batch_rows
from evalkit.engine.windows import plan_doc_isolated
from evalkit.strategies.sliding import Sliding


class ReorderedCall(Sliding):
    name = "gallery:reordered-call"

    def run(self, ctx) -> None:
        windows, B = self.plan(ctx.data), self.opts.batch_windows
        with torch.inference_mode():
            for i in range(0, len(windows), B):
                positions, rows, _ = batch_rows(ctx, windows[i:i + B])
                ctx.score(positions[::-1].copy(), rows.flip(0))
                ctx.after_scoring(positions)


class DynamicDocOrder(Sliding):
    name = "gallery:dynamic-doc-order"
    claims_doc_isolation = True
    scores_in_stream_order = False  # documents in a fresh random order: a cache keeps to each document

    @property
    def label(self) -> str:
        return self.name + "(doc)"

    def run(self, ctx) -> None:
        o = self.opts
        windows = plan_doc_isolated(ctx.data.doc_starts, ctx.data.n_tokens, o.seq_len, o.stride)
        by_doc: dict[int, list] = {}
        for w in windows:
            by_doc.setdefault(int(np.searchsorted(ctx.data.doc_starts, w.score_from - 1, side="right")), []).append(w)
        order = np.random.default_rng(int.from_bytes(os.urandom(8), "little")).permutation(sorted(by_doc))
        with torch.inference_mode():
            for doc in order:
                positions, rows, _ = batch_rows(ctx, by_doc[int(doc)])
                ctx.score(positions, rows)


class NegativeTilt(Sliding):
    """Hint h = the most frequent follower of x_{t-1} among scored tokens, strength
    b = -1.5 (1 - H / log V) from the model's entropy H (negative: a confident model pushes
    the hint down): p'(a) = p(a) e^{b [a = h]} / (1 + p(h) (e^b - 1)). Learns through
    `ctx.tokens_for_learning` after each call, in stream order."""

    name = "gallery:negative-tilt"
    strength = 1.5

    def run(self, ctx) -> None:
        V = ctx.model.cfg.vocab_size
        tok = ctx.data.tokens.astype(np.int64)
        pair = np.zeros((V, V), np.int64)
        hint = np.full(V, -1, np.int64)
        windows, B = self.plan(ctx.data), self.opts.batch_windows
        with torch.inference_mode():
            for i in range(0, len(windows), B):
                positions, rows, _ = batch_rows(ctx, windows[i:i + B])
                lp = rows.double()  # (n, V)
                h = torch.from_numpy(hint[tok[positions - 1]])
                H = -(lp.exp() * lp).sum(1)
                b = torch.where(h >= 0, -self.strength * (1.0 - H / math.log(V)), torch.zeros_like(H))
                r = torch.arange(lp.shape[0])
                hc = h.clamp(min=0)
                out = lp - torch.log1p(lp[r, hc].exp() * torch.expm1(b))[:, None]
                out[r, hc] += b
                ctx.score(positions, out)
                for t in positions[np.argsort(positions)].tolist():
                    _ = ctx.tokens_for_learning(np.array([t]))
                    c, x = int(tok[t - 1]), int(tok[t])
                    pair[c, x] += 1
                    if hint[c] < 0 or pair[c, x] > pair[c, hint[c]]:
                        hint[c] = x
