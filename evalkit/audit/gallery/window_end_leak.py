"""ILLEGAL (rule C1): a leak of the target only at each window's LAST scored target.

Sliding windows, but at the last target of every window the row is tilted towards the
true token (still a normalized distribution). A few fixed probe positions rarely land on a
window end; the audit perturbs the first and last scored target of windows at every
stride phase, so target independence FAILS it.
"""
from __future__ import annotations

import numpy as np

from evalkit.audit.gallery.windows import run_transformed, true_token_tilt
from evalkit.strategies.sliding import Sliding


class WindowEndLeak(Sliding):
    name = "gallery:window-end-leak"

    def run(self, ctx) -> None:
        windows = self.plan(ctx.data)
        ends = {w.end - 1 for w in windows}

        def leak(ctx, positions, rows, _which):
            return true_token_tilt(ctx, positions, rows, np.array([p in ends for p in positions.tolist()]))

        run_transformed(ctx, windows, self.opts.batch_windows, leak)
