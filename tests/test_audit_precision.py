"""Issue 12, item 1: on models with a trained model's logit scale (std 3-6) at V=1024 and
V=8192, float32 rounding must never make a built-in FAIL (the old 1e-6 tolerance on
float32 rows failed plain `flat` on half the rows at V=8192). Trained demo artifacts are
audited by benchmarks/audit_time.py; this test keeps CI fast with scaled random models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.audit.bookkeeping import MIN_CYCLES, check_state
from evalkit.audit.normalization import fast_tolerance
from evalkit.audit.result import FAIL, INCONCLUSIVE, NONDETERMINISTIC
from evalkit.audit.runner import Options, audit
from evalkit.audit.selftest import opts_for, synthetic_stream
from evalkit.audit.subject import Run, Subject
from evalkit.engine.dist import DistInfo
from evalkit.engine.ledger import Ledger
from evalkit.strategies.registry import build_strategy
from tests.conftest import random_model, tiny_config


def scaled_model(vocab: int):
    model = random_model(tiny_config(vocab_size=vocab))
    with torch.no_grad():
        model.tok_emb.weight.mul_(8.0)  # tied head: logit std ~5
    x = torch.randint(2, vocab, (1, 64))
    with torch.no_grad():
        std = float(model(x).float().std())
    assert 3.0 <= std <= 7.0, std
    return model


@pytest.mark.parametrize("vocab", [1024, 8192])
@pytest.mark.parametrize("name, extra, mixer", [("flat", [], None), ("sliding", [], None),
                                                ("sliding", [], "mix:orders=2-3"), ("sliding", [], "tilt:orders=2-3")])
def test_builtins_pass_at_realistic_logit_scale(vocab, name, extra, mixer) -> None:
    torch.set_num_threads(1)
    model = scaled_model(vocab)
    subject = Subject(name, lambda: build_strategy(name, opts_for(extra)), model,
                      DistInfo(0, 1, torch.device("cpu")), mixer)
    stream = lambda f: synthetic_stream(n_docs=3 * f, doc_len=160 * f, vocab=vocab)[0]  # noqa: E731
    result = audit(subject, stream, None, Options(effort=1, probes=48, max_targets=4))
    bad = [f"{c.name} {c.status}: {c.detail}" for c in result.checks if c.status in (FAIL, NONDETERMINISTIC)]
    assert not bad, bad
    norm = next(c for c in result.checks if c.name == "normalization")
    worst = max(t["fast_diff"] for t in norm.trials)
    print(f"V={vocab} {name}+{mixer}: worst |fast - full| {worst:.3e} (tolerance {fast_tolerance(vocab):.1e}), "
          f"worst |sum - 1| {max(abs(t['sum_p'] - 1) for t in norm.trials):.3e}")
    assert worst < fast_tolerance(vocab) / 5  # margin: rounding is far below the tolerance


def test_unnormalized_rows_fail_even_when_small() -> None:
    """A strategy that scores scaled logits (not renormalized) is caught although its
    full float64 row is renormalized: the fast path disagrees with it by log(sum)."""
    from evalkit.strategies.sliding import Sliding

    class Tempered(Sliding):
        def run(self, ctx) -> None:
            orig = ctx.log_probs
            ctx.log_probs = lambda idx, model=None, rows=None: orig(idx, model, rows) * 0.98  # sum p != 1
            super().run(ctx)

    torch.set_num_threads(1)
    model = scaled_model(1024)
    subject = Subject("t", lambda: Tempered(opts_for([])), model, DistInfo(0, 1, torch.device("cpu")))
    result = audit(subject, lambda f: synthetic_stream(n_docs=2, doc_len=120)[0], None,
                   Options(effort=1, probes=16, max_targets=2))
    norm = next(c for c in result.checks if c.name == "normalization")
    assert norm.status == FAIL and "fast path" in norm.detail, norm.detail
    assert np.isfinite(fast_tolerance(8192))


@pytest.mark.parametrize("mixer", ["mix:orders=2-11", "tilt:orders=2-11"])
def test_a_cache_scored_in_few_calls_is_exercised(mixer) -> None:
    """A whole stream scored in a handful of calls (a large --batch-windows, as on real
    splits) still exercises a per-token cache: it learned thousands of positions before the
    probes. Counting calls instead called this INCONCLUSIVE (a trained sp8192 model, 6 calls)."""
    torch.set_num_threads(1)
    model = scaled_model(1024)
    opts = opts_for(["--batch-windows", "64"])  # 2048 positions a call: 6 calls, the stream is not grown
    subject = Subject("sliding", lambda: build_strategy("sliding", opts), model,
                      DistInfo(0, 1, torch.device("cpu")), mixer)
    stream = lambda f: synthetic_stream(n_docs=4 * f, doc_len=3000 * f)[0]  # noqa: E731
    result = audit(subject, stream, None, Options(effort=1, probes=32, max_targets=4))
    rows = {c.name: c for c in result.checks}
    calls = rows["state exercised"].trials[0]["learn_calls"]
    print(f"{mixer}: {calls} learning calls; {rows['state exercised'].detail}")
    assert result.factor == 1 and calls < 2 * MIN_CYCLES  # the median probe saw < MIN_CYCLES calls
    bad = [f"{c.name} {c.status}: {c.detail}" for c in result.checks if c.status in (FAIL, INCONCLUSIVE)]
    assert not bad, bad
    assert "positions learned by the n-gram cache" in rows["state exercised"].detail


def test_adapter_learning_counts_calls_not_cache_steps() -> None:
    """An adapter that learned in 2 calls before the probes is not exercised, however many
    positions a cache learned meanwhile: each kind of state is counted on its own."""
    led = Ledger(400)
    led.record_scores(np.arange(1, 200), np.zeros(199), "s")
    led.check_learn(np.arange(1, 200), "s", cache=True)  # the cache: 199 positions, one call
    led.check_learn(np.arange(1, 100), "s")  # an adapter: two calls
    led.check_learn(np.arange(100, 200), "s")
    led.record_scores(np.arange(200, 400), np.zeros(200), "s")
    led.check_learn(np.arange(200, 400), "s", cache=True)
    run = Run(led, mixer_stats=[{"acted": 10}])
    probes_at = np.array([250, 300, 350])
    res, learned = check_state(run, synthetic_stream(n_docs=2, doc_len=199)[0], probes_at)
    assert learned is False and res.status == INCONCLUSIVE, res.detail
    assert "2 learning calls; 299 positions learned by the n-gram cache" in res.detail, res.detail
    for _ in range(4):  # adapter learning after the probes were scored does not count for them
        led.check_learn(np.arange(1, 3), "s")
    res, learned = check_state(run, synthetic_stream(n_docs=2, doc_len=199)[0], probes_at)
    assert learned is False and "2 learning calls;" in res.detail, res.detail
