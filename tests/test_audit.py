"""The audit audited: built-ins pass, every gallery entry fails the check named for it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.audit.checks import Budget, Subject, check_budget, check_ledger, run_strategy
from evalkit.engine.dist import DistInfo
from evalkit.audit.gallery import GALLERY
from evalkit.audit.selftest import opts_for, run_matrix, synthetic_stream
from evalkit.strategies.sliding import Sliding
from tests.conftest import random_model, tiny_config


@pytest.fixture(scope="module")
def matrix() -> dict:
    torch.set_num_threads(1)
    return {label: (entry, {c.name: c for c in checks}) for label, entry, checks in run_matrix()}


def test_builtins_pass_every_check(matrix) -> None:
    builtins = {k: v for k, v in matrix.items() if v[0] is None}
    assert {"flat", "sliding", "sliding(doc)", "sliding+mix", "sliding+tilt"} <= set(builtins)
    for label, (_, checks) in builtins.items():
        bad = [f"{c.name}: {c.detail}" for c in checks.values() if c.passed is False]
        assert not bad, f"{label} failed {bad}"
    assert builtins["sliding(doc)"][1]["doc isolation"].passed is True  # the claim was checked, not skipped


@pytest.mark.parametrize("entry", GALLERY, ids=[g.cls for g in GALLERY])
def test_gallery_entry_fails_its_check(matrix, entry) -> None:
    _, checks = matrix[f"{entry.cls} [{entry.check}]"]
    got = checks[entry.check]
    assert got.passed is False, f"{entry.cls} should fail {entry.check}: {got.detail}"
    assert "position" in got.detail  # the reviewer is told where


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
    subject = Subject("t", lambda: cls(opts_for([])), random_model(tiny_config()), DistInfo(0, 1, torch.device("cpu")))
    res = check_ledger(run_strategy(subject, data), data, None)
    assert res.passed is False and needle in res.detail


def test_budget_limits() -> None:
    ok = Budget(15_000_000, 30_000, 1e12, 1000, 62_020_000, 1.0)
    assert check_budget(ok).passed
    assert "by 30,000" in check_budget(Budget(15_970_000, 60_000, 1e12, 1000, 62_020_000, 1.0)).detail
    slow = Budget(1000, 1000, 1e16, 1000, 62_020_000, 1.0)  # 1e16 x 62,020 / (8 x 989e12 x 0.35) s
    assert slow.projected_s == pytest.approx(1e16 * 62_020 / (8 * 989e12 * 0.35))
    assert check_budget(slow).passed is False


def test_perturbation_never_touches_bos() -> None:
    from evalkit.audit.checks import perturb_positions, replacement
    data, table = synthetic_stream()
    for t in perturb_positions(data, 6, 64):
        assert data.tokens[t] != 1 and t - 1 not in set(data.doc_starts.tolist())
        new = replacement(data.tokens, t, 1024, table)
        assert new != data.tokens[t] and new != 1 and not table.is_boundary[new]
    assert np.all(data.tokens[data.doc_starts] == 1)
