"""The audit audited: built-ins and legal traps pass, every illegal gallery entry fails the
check named for it (the self-test matrix), and the pieces hold their properties."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.audit.bookkeeping import check_ledger
from evalkit.audit.budget import Budget, check_budget
from evalkit.audit.causality import before_region
from evalkit.audit.gallery import GALLERY
from evalkit.audit.positions import choose_targets, replacement, stretches, suffix_sets, window_bounds
from evalkit.audit.result import FAIL, INCONCLUSIVE, NONDETERMINISTIC
from evalkit.audit.selftest import opts_for, run_matrix, synthetic_stream
from evalkit.audit.subject import Subject, run_strategy
from evalkit.engine import probes
from evalkit.engine.dist import DistInfo
from evalkit.engine.ledger import Ledger
from evalkit.strategies.sliding import Sliding
from tests.conftest import random_model, tiny_config

CPU = DistInfo(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def matrix() -> dict:
    torch.set_num_threads(1)
    return {label: (entry, {c.name: c for c in checks}) for label, entry, checks in run_matrix()}


def test_legal_strategies_get_no_bad_verdict(matrix) -> None:
    legal = {k: v for k, v in matrix.items() if v[0] is None or v[0].check is None}
    assert {"flat", "sliding", "sliding(doc)", "sliding+mix", "sliding+tilt", "ttt", "ReorderedCall",
            "DynamicDocOrder", "NegativeTilt"} <= set(legal)
    for label, (_, checks) in legal.items():
        bad = [f"{c.name} {c.status}: {c.detail}" for c in checks.values()
               if c.status in (FAIL, INCONCLUSIVE, NONDETERMINISTIC)]
        assert not bad, f"{label}: {bad}"
    assert legal["sliding(doc)"][1]["doc isolation"].passed is True  # the claim was checked, not skipped
    assert legal["DynamicDocOrder"][1]["doc isolation"].passed is True
    assert legal["sliding+mix"][1]["state exercised"].passed is True  # the cache learned before the probes
    assert legal["ttt+mix"][1]["stream-causal"].status == "no"  # longest-first queue + shared cache
    assert legal["sliding"][1]["stream-causal"].status == "yes"


@pytest.mark.parametrize("entry", [g for g in GALLERY if g.check], ids=[g.cls for g in GALLERY if g.check])
def test_illegal_entry_fails_its_check(matrix, entry) -> None:
    _, checks = matrix[entry.cls]
    got = checks[entry.check]
    assert got.status == FAIL, f"{entry.cls} should fail {entry.check}: {got.detail}"
    assert "position" in got.detail and "document" in got.detail  # the reviewer is told where
    assert got.detail.startswith("C") or got.detail.startswith("the engine refused: C")  # ... and which rule


def test_perturbation_trials_are_recorded(matrix) -> None:
    ti = matrix["sliding"][1]["target independence"]
    assert ti.trials and all("outcome" in t and "why" in t for t in ti.trials)
    whys = {t["why"].split(" (")[0] for t in ti.trials}
    assert {"inside the first window", "inside the last window", "first scored target of a window",
            "last scored target of a window"} <= whys
    assert any(w.startswith("random") for w in (t["why"] for t in ti.trials))


class _ValWarmup(Sliding):
    """Records a warm-up on validation tokens honestly; the ledger check must refuse it."""

    name = "test:val-warmup-recorded"

    def run(self, ctx) -> None:
        ctx.ledger.record_warmup(self.name, "validation", 128)
        super().run(ctx)


class _SkipsTail(Sliding):
    name = "test:skips-tail"

    def run(self, ctx) -> None:
        from evalkit.strategies.sliding import run_windows
        run_windows(ctx, [w for w in self.plan(ctx.data) if w.end < ctx.data.n_tokens], 4)


@pytest.mark.parametrize("cls, needle", [(_ValWarmup, "'validation'"), (_SkipsTail, "scored 0 times")])
def test_ledger_check_catches(cls, needle) -> None:
    torch.set_num_threads(1)
    data, _ = synthetic_stream(n_docs=2, doc_len=120)
    subject = Subject("t", lambda: cls(opts_for([])), random_model(tiny_config()), CPU)
    res = check_ledger(run_strategy(subject, data), data, None)
    assert res.passed is False and needle in res.detail


def test_budget_limits(tmp_path) -> None:
    f = tmp_path / "code.py"
    f.write_text("x" * 30_000)
    ok = Budget(15_000_000, [f], 100.0, 62_020_000, (1.0, 0.0), 0.0)
    assert check_budget(ok).passed
    assert "by 30,000" in check_budget(Budget(15_970_000 + 30_000, [f], 100.0, 1, (1, 0), 0)).detail
    assert check_budget(Budget(1000, [f], 601.0, 1, (1, 0), 0)).passed is False


def test_causality_region_is_by_call_not_by_order() -> None:
    led = Ledger(10)
    led.record_scores(np.array([1, 4, 3, 2]), np.zeros(4), "s")  # one call, any order
    led.record_scores(np.array([5, 6]), np.zeros(2), "s")
    region = before_region(led, np.array([3]))
    # same call: 1 is earlier in the stream and passed earlier; 4 is later (context); 2 was
    # passed after 3, so a mixer learning in call order may have learned x_3 before it
    assert np.flatnonzero(region).tolist() == [1]
    assert np.flatnonzero(before_region(led, np.array([6]))).tolist() == [1, 2, 3, 4, 5]


def test_targets_cover_windows_phases_and_never_bos() -> None:
    data, table = synthetic_stream()
    strategy = Sliding(opts_for([]))
    run = run_strategy(Subject("s", lambda: strategy, random_model(tiny_config()), CPU), data)
    targets = choose_targets(data, run.ledger, window_bounds(strategy, data), 32, 1, 7)
    pos = [t.position for t in targets]
    assert len(pos) == len(set(pos)) and all(data.tokens[p] != 1 for p in pos)
    assert min(pos) < 64 and max(pos) > data.n_tokens - 64  # inside the first and the last window
    ends = {e for _, e in window_bounds(strategy, data)}
    assert any(p in ends for p in pos)  # a window's last scored target
    assert len(stretches(run.ledger)) >= 1
    for t in pos:
        new = replacement(data.tokens, t, 1024, table)
        assert new != data.tokens[t] and new != 1 and not table.is_boundary[new]
    for what, at, new in suffix_sets(data, 1024, table):
        assert at.size == new.size and not np.isin(at, data.doc_starts).any(), what


def test_probes_are_invisible_and_float64() -> None:
    """Nothing in the ledger or the data tells a strategy that probes are taken; probe rows
    of a float32 log-softmax at V=8192 sum to 1 in float64."""
    seen = {}

    class Spy(Sliding):
        def run(self, ctx) -> None:
            seen["attrs"] = set(vars(ctx.ledger)) | set(vars(ctx))
            seen["source"] = ctx.data.source
            super().run(ctx)

    data, _ = synthetic_stream(n_docs=2, doc_len=100, vocab=8192)
    model = random_model(tiny_config(vocab_size=8192))
    with torch.no_grad():
        model.tok_emb.weight.mul_(8.0)  # tied head: logits of std ~5, a trained model's scale
    subject = Subject("s", lambda: Spy(opts_for([])), model, CPU)
    plain = run_strategy(subject, data)
    attrs_plain, source_plain = seen["attrs"], seen["source"]
    probed = run_strategy(subject, data, frozenset({5, 50, 150}))
    assert seen["attrs"] == attrs_plain and seen["source"] == source_plain
    assert not any("probe" in a for a in seen["attrs"])
    assert np.array_equal(plain.ledger.nll, probed.ledger.nll)  # probing changes nothing
    assert set(probed.probes) == {5, 50, 150}
    for p in probed.probes.values():
        assert p.logp.dtype == np.float64 and abs(np.exp(p.logp).sum() - 1) < 1e-12
    assert probes.active() is None  # the capture ends with the run


def test_stop_after_ends_the_run_early() -> None:
    data, _ = synthetic_stream(n_docs=2, doc_len=200)
    subject = Subject("s", lambda: Sliding(opts_for([])), random_model(tiny_config()), CPU)
    stop = np.zeros(data.n_tokens, bool)
    stop[1:40] = True
    run = run_strategy(subject, data, stop_after=stop)
    assert run.stopped and not run.error
    assert (run.ledger.score_event[1:40] >= 0).all() and (run.ledger.score_event < 0).any()
