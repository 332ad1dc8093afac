"""Window plans: which positions each model call sees and which it scores.

Positions index the token stream x_0..x_{N-1}. Position t >= 1 is a *target*: it is
predicted from x_0..x_{t-1}. Position 0 (the first BOS) is never a target.

A `Window(start, end, score_from)` feeds inputs x[start-1 : end-1] to the model, which
predicts targets start..end-1, and scores only targets score_from..end-1. Every plan
here scores each target exactly once (the gold tests in tests/test_windows.py hold them
to it), so the ledger's coverage check is a formality for them — not for user plugins.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int  # first target predicted; inputs begin at start - 1
    end: int  # one past the last target predicted
    score_from: int  # first target this window scores (start <= score_from < end)

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_range(lo: int, hi: int, seq_len: int, stride: int) -> list[Window]:
    """Windows over targets [lo, hi) that never read an input before lo - 1.

    The first window scores all its targets; each later one advances its end by `stride`
    and scores only the new targets, with as much context (up to seq_len) as fits. With
    stride == seq_len this is the non-overlapping (flat) plan, whose last window is short.
    """
    if seq_len < 1 or not 1 <= stride <= seq_len:
        raise ValueError(f"need seq_len >= 1 and 1 <= stride <= seq_len, got {seq_len=} {stride=}")
    windows: list[Window] = []
    end = lo
    while end < hi:
        new_end = min(hi, lo + seq_len) if not windows else min(hi, end + stride)
        if stride == seq_len:
            start = end  # flat: no overlap, the tail window is short
        else:
            start = max(lo, new_end - seq_len)
        windows.append(Window(start, new_end, end))
        end = new_end
    return windows


def plan_flat(n_tokens: int, seq_len: int, drop_tail: bool = False) -> list[Window]:
    """Non-overlapping windows of seq_len. drop_tail mirrors the baseline script's
    `eval_val`, which scores only the first ((N-1)//L)*L targets."""
    hi = n_tokens
    if drop_tail:
        hi = 1 + ((n_tokens - 1) // seq_len) * seq_len
    return plan_range(1, hi, seq_len, seq_len)


def plan_sliding(n_tokens: int, seq_len: int, stride: int) -> list[Window]:
    return plan_range(1, n_tokens, seq_len, stride)


Doc = tuple[int, int, int]  # (document index, first target, one past the last target)


def document_ranges(doc_starts: np.ndarray, n_tokens: int) -> list[tuple[int, int]]:
    """Target ranges [lo, hi) per document. A document starting at BOS position s owns
    targets s+1 .. next_s: its last target is the next document's BOS, predicted from
    this document alone, so every target of the stream belongs to exactly one document."""
    starts = [int(s) for s in doc_starts]
    bounds = starts[1:] + [n_tokens - 1]
    return [(s + 1, b + 1) for s, b in zip(starts, bounds) if b + 1 > s + 1]


def plan_doc_isolated(doc_starts: np.ndarray, n_tokens: int, seq_len: int, stride: int) -> list[Window]:
    """The sliding (or, with stride == seq_len, flat) plan per document: no window's
    inputs cross a BOS, so nothing leaks from one document into the next."""
    windows: list[Window] = []
    for lo, hi in document_ranges(doc_starts, n_tokens):
        windows.extend(plan_range(lo, hi, seq_len, stride))
    return windows


def scored_counts(windows: list[Window], n_tokens: int) -> np.ndarray:
    """How many times each position is scored by a plan (for tests and the audit)."""
    counts = np.zeros(n_tokens, dtype=np.int64)
    for w in windows:
        counts[w.score_from:w.end] += 1
    return counts
