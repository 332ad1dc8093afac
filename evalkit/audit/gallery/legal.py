"""LEGAL strategies the audit must PASS, written to trip a careless audit.

`ReorderedCall`: sliding windows, each call's positions handed to `ctx.score` in reverse
order (as a gather across ranks may). `DynamicDocOrder`: per-document windows, documents
claimed in an order drawn fresh each run (as multi-GPU schedulers do), one document per
call; claims document isolation. `NegativeTilt`: a normalized tilt away from the bigram
cache's hint token with an entropy-driven, negative strength; the cache learns only
after scoring, in stream order.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from evalkit.audit.gallery.mixing import SlidingWithMixer
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


class TiltMixer:
    """Hint h = the most frequent follower of x_{t-1} so far (kept incrementally), strength
    b = -1.5 (1 - H / log V) from the model's entropy H: p'(a) = p(a) e^{b[a=h]} / (1 + p(h)(e^b - 1))."""

    name = "negative-tilt"

    def __init__(self, vocab_size: int, strength: float = 1.5):
        self.V, self.strength = vocab_size, strength
        self.pair = np.zeros((vocab_size, vocab_size), np.int64)
        self.hint = np.full(vocab_size, -1, np.int64)  # best follower of each context token, -1 none
        self.acted = 0

    def bind(self, tokens: np.ndarray) -> None:
        self.tok = np.asarray(tokens, dtype=np.int64)

    def _hint_strength(self, positions: np.ndarray, entropy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = self.hint[self.tok[positions - 1]]
        b = np.where(h >= 0, -self.strength * (1.0 - entropy / math.log(self.V)), 0.0)  # negative strengths
        return np.maximum(h, 0), b

    def distribution(self, positions, model_logp) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        lp = np.asarray(model_logp, np.float64)
        lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)  # (n, V)
        h, b = self._hint_strength(positions, -(np.exp(lp) * lp).sum(1))
        rows = np.arange(lp.shape[0])
        out = lp - np.log1p(np.exp(lp[rows, h]) * np.expm1(b))[:, None]
        out[rows, h] += b
        return out

    def score(self, positions, model_logp, model_entropy=None) -> np.ndarray:
        """O(n): only the target's and the hint's log-probs are read."""
        positions = np.asarray(positions, dtype=np.int64)
        lp = np.asarray(model_logp)
        if model_entropy is None:
            model_entropy = -(np.exp(lp.astype(np.float64)) * lp).sum(1)
        h, b = self._hint_strength(positions, np.asarray(model_entropy, np.float64))
        rows, y = np.arange(positions.size), self.tok[positions]
        lp_y, lp_h = lp[rows, y].astype(np.float64), lp[rows, h].astype(np.float64)
        self.acted += int((b != 0).sum())
        return lp_y + b * (y == h) - np.log1p(np.exp(lp_h) * np.expm1(b))

    def update(self, positions) -> None:
        for t in np.asarray(positions, dtype=np.int64).tolist():
            c, x = int(self.tok[t - 1]), int(self.tok[t])
            self.pair[c, x] += 1
            if self.hint[c] < 0 or self.pair[c, x] > self.pair[c, self.hint[c]]:
                self.hint[c] = x

    def stats(self) -> dict:
        return {"positions": int(self.pair.sum()), "acted": self.acted}

    def memory_bytes(self) -> int:
        return int(self.pair.nbytes)


class NegativeTilt(SlidingWithMixer):
    name = "gallery:negative-tilt"

    def make_mixer(self, ctx) -> TiltMixer:
        return TiltMixer(ctx.model.cfg.vocab_size)
