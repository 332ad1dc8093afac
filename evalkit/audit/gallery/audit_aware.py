"""ILLEGAL (rule C1): honest only when it can tell it is being audited.

It looks for what an audit used to leave visible: a `probe_positions` attribute on the
ledger, or a data source marked as a perturbed copy. Seeing neither, it leaks the target
into every row (a normalized tilt towards the true token). The audit leaves no such trace
(probes are captured by the engine; copies keep the original's name), so this strategy
cheats under audit as it would in a real run, and target independence FAILS it.
"""
from __future__ import annotations

import numpy as np

from evalkit.audit.gallery.windows import run_transformed, true_token_tilt
from evalkit.strategies.sliding import Sliding


def audited(ctx) -> bool:
    return bool(getattr(ctx.ledger, "probe_positions", None)) or "perturbed" in str(ctx.data.source)


class AuditAware(Sliding):
    name = "gallery:audit-aware"

    def run(self, ctx) -> None:
        if audited(ctx):
            return super().run(ctx)

        def leak(ctx, positions, rows, _which):
            return true_token_tilt(ctx, positions, rows, np.ones(len(positions), bool), b=0.5)

        run_transformed(ctx, self.plan(ctx.data), self.opts.batch_windows, leak)
