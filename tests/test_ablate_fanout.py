"""evaluate_many: one model pass feeding several mixers gives each exactly what evaluate gives."""
import argparse

import numpy as np
import pytest

from evalkit.engine.dist import DistInfo
from evalkit.engine.context import EvalData
from evalkit.engine.loop import evaluate
from evalkit.engine.fanout import evaluate_many
from evalkit.strategies.registry import Strategy, build_strategy
from tests.conftest import random_model, tiny_config

SPECS = [None, "mix:orders=2-4", "tilt:orders=2-3"]


def synthetic_data(n: int = 700, vocab: int = 1024, seed: int = 0) -> EvalData:
    """Random tokens with repeats (so the n-gram caches find something), BOS at each document."""
    rng = np.random.default_rng(seed)
    motif = rng.integers(2, vocab, 12)
    tokens = np.where(rng.random(n) < 0.5, np.resize(motif, n), rng.integers(2, vocab, n)).astype(np.uint16)
    starts = np.array([0, 150, 310, 520], dtype=np.int64)
    tokens[starts] = 1
    target_bytes = rng.integers(1, 5, n).astype(np.int64)
    target_bytes[0] = 0
    return EvalData(tokens, target_bytes, starts)


def opts(**kw) -> argparse.Namespace:
    base = dict(seq_len=32, stride=8, batch_windows=4, doc_isolated=False, drop_tail=False)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("name,extra", [("sliding", {}), ("flat", {"doc_isolated": True})])
def test_fanout_is_bitwise_the_separate_runs(name, extra):
    model, data, info = random_model(tiny_config()), synthetic_data(), DistInfo()
    fanned = evaluate_many(model, data, build_strategy(name, opts(**extra)), info, SPECS, progress=False)
    for spec, run in zip(SPECS, fanned):
        alone, ledger = evaluate(model, data, build_strategy(name, opts(**extra)), info, spec, progress=False)
        assert run.result.label == alone.label
        np.testing.assert_array_equal(run.result.per_doc_nll, alone.per_doc_nll)
        np.testing.assert_array_equal(run.ledger.nll, ledger.nll)
        assert (run.result.val_bpb, run.result.val_loss, run.result.bytes, run.result.tokens) == \
               (alone.val_bpb, alone.val_loss, alone.bytes, alone.tokens)
        assert run.result.config == alone.config and run.result.coverage == alone.coverage
        assert (run.mixer_seconds > 0) == (spec is not None)
    # The mixers really did something different from the model alone.
    assert len({r.result.val_bpb for r in fanned}) == len(SPECS)


class Learner(Strategy):
    """Not a window strategy: it might change the model between batches."""

    name = "learner"


def test_refuses_to_share_a_pass_for_strategies_that_may_learn():
    model, data = random_model(tiny_config()), synthetic_data()
    with pytest.raises(ValueError, match="run it once per mixer"):
        evaluate_many(model, data, Learner(opts()), DistInfo(), [None, "mix:orders=2-3"], progress=False)
