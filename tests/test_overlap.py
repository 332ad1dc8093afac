"""Overlapped scoring (a host thread scores batch k while the model runs batch k+1, or
while TTT trains on chunk k) gives the serial loop's scores bit for bit, with every mixer,
the same ledger timeline, and its errors still surface; rows fixed in the ledger are out
of the strategy's reach."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.audit.selftest import opts_for
from evalkit.engine import overlap
from evalkit.engine.dist import DistInfo
from evalkit.engine.ledger import LedgerViolation
from evalkit.engine.loop import evaluate, make_mixer
from evalkit.strategies.registry import build_strategy
from tests.conftest import random_model, tiny_config
from tests.test_caches_engine import SPECS, opts, repeating_data
from tests.test_invariance import PHASES, TTT, phrase_data


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
    real = EvalContext._settle

    def twice(self, *args):  # write every batch's numbers twice: the ledger refuses
        real(self, *args)
        return real(self, *args)

    monkeypatch.setattr(EvalContext, "_settle", twice)
    with pytest.raises(LedgerViolation, match="already settled"):
        evaluate(model, data, build_strategy("sliding", opts(3)), DistInfo(), None, progress=False)


TTT_CASES = {  # name -> (flags, mixer): the per-document adapters, phases, and n-gram kinds
    "ttt": (TTT, None),
    "ttt+phases": (PHASES, None),
    "ttt+mix": (TTT, "mix:orders=2-4"),
    "ttt+tilt": (TTT, "tilt:orders=2-4"),
    "ttt+phases+tilt[records]": (PHASES, "tilt:preset=records"),
}
TIMELINE = ("score_count", "score_event", "score_order", "learn_count", "cache_seq")


@pytest.mark.parametrize("name", list(TTT_CASES))
def test_ttt_overlapped_equals_serial(monkeypatch, name):
    """TTT trains on a chunk while the host thread scores it: same NLLs bit for bit, and the
    same ledger timeline event for event (fix, cache learn, adapter learn) as inline scoring."""
    flags, spec = TTT_CASES[name]
    model, data = random_model(tiny_config(train_seq_len=32)), phrase_data()
    runs = {}
    for depth in (0, 2):
        monkeypatch.setattr(overlap, "DEPTH", depth)
        result, ledger = evaluate(model, data, build_strategy("ttt", opts_for(flags)), DistInfo(), spec,
                                  progress=False)
        runs[depth] = (result, ledger)
    (a, la), (b, lb) = runs[0], runs[2]
    print(f"{name}: serial vs overlapped max |dnll| = {np.abs(la.nll - lb.nll).max():.3e}")
    assert a.val_bpb == b.val_bpb and np.array_equal(la.nll, lb.nll)
    assert a.coverage["scored_once"] == a.coverage["targets"] == data.n_tokens - 1
    for key in TIMELINE:
        assert np.array_equal(getattr(la, key), getattr(lb, key)), key
    assert la.learn_events == lb.learn_events and la.learn_count.sum() > 0
    if spec:
        assert (la.cache_seq[1:] >= 0).all()


def test_fixed_rows_are_out_of_the_callers_reach():
    """Learning is allowed once a score is fixed, before its number is computed: that is
    legal only if nothing done after the fix reaches the rows. A caller that edits them in
    place after training (here: writes log p = 0 at every target) changes no score."""
    from evalkit.engine.context import EvalContext
    from evalkit.engine.ledger import Ledger

    model, data = random_model(tiny_config()), repeating_data()
    positions = np.arange(1, 40)
    rows = torch.log_softmax(torch.randn(positions.size, model.cfg.vocab_size, generator=torch.Generator()
                                         .manual_seed(0)), dim=-1)
    honest = -rows.gather(1, torch.from_numpy(data.tokens[positions].astype(np.int64))[:, None])[:, 0].double()
    for spec in (None, "tilt:orders=2-4"):
        mixer = make_mixer(model, data, spec)
        ctx = EvalContext(model, data, Ledger(data.n_tokens), "edit", DistInfo(), mixer, progress=False)
        want = EvalContext(model, data, Ledger(data.n_tokens), "edit", DistInfo(), make_mixer(model, data, spec),
                           progress=False).score(positions, rows)
        edited = rows.clone()
        later = ctx.fix_scores(positions, edited)
        targets = torch.from_numpy(ctx.tokens_for_learning(positions).astype(np.int64))  # allowed: fixed
        edited[torch.arange(positions.size), targets] = 0.0  # the "cheat", after the fix
        got = later()
        assert np.array_equal(got, want) and np.array_equal(ctx.ledger.nll[positions], want)
        if spec is None:
            assert np.array_equal(got, honest.numpy())


def test_a_fix_whose_score_never_comes_is_refused(monkeypatch):
    """A strategy that fixes scores (and may then learn from them) but never computes them
    would be counted with NLL 0: the engine refuses the result."""
    from evalkit.strategies.sliding import Sliding, batch_log_probs

    class FixOnly(Sliding):
        def run(self, ctx):
            windows = self.plan(ctx.data)
            with torch.inference_mode():
                for i in range(0, len(windows), 4):
                    ctx.fix_scores(*batch_log_probs(ctx, windows[i:i + 4]))  # second half dropped

    model, data = random_model(tiny_config()), repeating_data()
    with pytest.raises(LedgerViolation, match="fixed but its score never computed"):
        evaluate(model, data, FixOnly(opts(3)), DistInfo(), None, progress=False)


def test_ttt_learns_from_chunks_whose_scores_are_still_being_computed(monkeypatch):
    """The overlap is real: with a slow host thread, the adapters train on chunks whose
    scores are fixed but not yet computed, and the scores are still the serial ones."""
    import time

    from evalkit.engine.context import EvalContext
    model, data = random_model(tiny_config(train_seq_len=32)), phrase_data()
    monkeypatch.setattr(overlap, "DEPTH", 0)
    _, serial = evaluate(model, data, build_strategy("ttt", opts_for(TTT)), DistInfo(), "tilt:orders=2-4",
                         progress=False)
    monkeypatch.setattr(overlap, "DEPTH", 2)
    real_settle, real_learn, early = EvalContext._settle, EvalContext.tokens_for_learning, []

    def slow_settle(self, *args):
        time.sleep(0.01)
        return real_settle(self, *args)

    def learn(self, positions):
        early.append(bool(self.ledger.pending[positions].any()))
        return real_learn(self, positions)

    monkeypatch.setattr(EvalContext, "_settle", slow_settle)
    monkeypatch.setattr(EvalContext, "tokens_for_learning", learn)
    _, ledger = evaluate(model, data, build_strategy("ttt", opts_for(TTT)), DistInfo(), "tilt:orders=2-4",
                         progress=False)
    print(f"{sum(early)} of {len(early)} learning reads came before their chunk's score was computed")
    assert sum(early) > len(early) // 2 and np.array_equal(ledger.nll, serial.nll)
