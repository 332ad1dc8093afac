"""Overlapped scoring (a host thread scores batch k while the model runs batch k+1) gives
the serial loop's scores bit for bit, with every mixer, and its errors still surface."""
from __future__ import annotations

import numpy as np
import pytest

from evalkit.engine import overlap
from evalkit.engine.dist import DistInfo
from evalkit.engine.ledger import LedgerViolation
from evalkit.engine.loop import evaluate
from evalkit.strategies.registry import build_strategy
from tests.conftest import random_model, tiny_config
from tests.test_caches_engine import SPECS, opts, repeating_data


@pytest.mark.parametrize("spec", [None, *SPECS])
def test_overlapped_equals_serial(monkeypatch, spec):
    model, data = random_model(tiny_config()), repeating_data()
    runs = {}
    for depth in (0, 1, 2):
        monkeypatch.setattr(overlap, "DEPTH", depth)
        result, ledger = evaluate(model, data, build_strategy("sliding", opts(3)), DistInfo(), spec, progress=False)
        runs[depth] = (result.val_bpb, ledger.nll.copy(), ledger.score_count.copy())
    for depth in (1, 2):
        assert runs[depth][0] == runs[0][0]
        assert np.array_equal(runs[depth][1], runs[0][1]) and np.array_equal(runs[depth][2], runs[0][2])


def test_worker_errors_reach_the_strategy(monkeypatch):
    """A ledger violation raised on the host thread surfaces from the strategy's run."""
    from evalkit.engine.context import EvalContext
    model, data = random_model(tiny_config()), repeating_data()
    real = EvalContext.score

    def twice(self, positions, logp):  # score every batch twice: C4 single pass
        real(self, positions, logp)
        return real(self, positions, logp)

    monkeypatch.setattr(EvalContext, "score", twice)
    with pytest.raises(LedgerViolation):
        evaluate(model, data, build_strategy("sliding", opts(3)), DistInfo(), None, progress=False)
