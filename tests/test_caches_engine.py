"""The engine's mixer path (evalkit/engine/mixing.py): per-token learning in plan order makes
scores independent of batching; probes see the state at their moment; only the slow path
reads whole rows."""
import argparse

import numpy as np
import pytest
import torch

from caches import parse_ngram_spec
from evalkit.engine.context import EvalData
from evalkit.engine.dist import DistInfo
from evalkit.engine.loop import evaluate
from evalkit.engine.mixing import device_entropy, score_through_mixer
from evalkit.engine.probes import probe_rows
from evalkit.strategies.registry import build_strategy
from tests.conftest import random_model, tiny_config


def repeating_data(n: int = 900, vocab: int = 1024, seed: int = 0) -> EvalData:
    """A 40-token motif repeated with 8% of tokens replaced: contexts of every order up to 16
    recur (so the records' order-16 tilt fires too), BOS at each document."""
    rng = np.random.default_rng(seed)
    tokens = np.resize(rng.integers(2, vocab, 40), n)
    noise = rng.random(n) < 0.08
    tokens[noise] = rng.integers(2, vocab, int(noise.sum()))
    starts = np.array([0, 150, 310, 520], dtype=np.int64)
    tokens[starts] = 1
    target_bytes = rng.integers(1, 5, n).astype(np.int64)
    target_bytes[0] = 0
    return EvalData(tokens.astype(np.uint16), target_bytes, starts)

SPECS = ["mix:orders=2-5", "tilt:orders=2-5", "tilt:preset=records", "tilt:orders=2-5,gate=0.6,scale=const"]


def opts(batch_windows: int) -> argparse.Namespace:
    return argparse.Namespace(seq_len=32, stride=8, batch_windows=batch_windows, doc_isolated=False,
                              drop_tail=False)


def test_sliding_mixers_do_not_depend_on_batch_windows():
    model, info = random_model(tiny_config()), DistInfo()
    data = repeating_data()
    plain = {bw: evaluate(model, data, build_strategy("sliding", opts(bw)), info, None, progress=False)[1].nll
             for bw in (1, 4, 16, 64)}
    assert all(np.array_equal(plain[1], v) for v in plain.values()), "the model itself depends on batching"
    for spec in SPECS:
        runs = {bw: evaluate(model, data, build_strategy("sliding", opts(bw)), info, spec, progress=False)[1].nll
                for bw in (1, 4, 16, 64)}
        diffs = {bw: float(np.abs(runs[bw] - runs[1]).max()) for bw in runs}
        print(f"{spec}: max |nll(bw) - nll(1)| = {diffs}; differs from the model at "
              f"{int((runs[1] != plain[1]).sum())} positions")
        for bw in (4, 16, 64):
            assert np.array_equal(runs[bw], runs[1]), (spec, bw)
        assert (runs[1] != plain[1]).sum() > 100


def _rows(n: int, V: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, V, generator=g) * 4, dim=-1)


@pytest.mark.parametrize("spec", SPECS[:2])
def test_probes_see_the_state_at_their_moment(spec):
    """A probe in the middle of a call equals the distribution of a mixer advanced up to it,
    and the scores do not change when probes are taken."""
    V = 64
    toks = np.random.default_rng(0).integers(0, 8, 400).astype(np.uint16)
    pos = np.arange(100, 300, dtype=np.int64)
    logp = _rows(pos.shape[0], V, 1)
    targets = torch.from_numpy(toks[pos].astype(np.int64))
    a, b, c = (parse_ngram_spec(V, spec) for _ in range(3))
    for m in (a, b, c):
        m.bind(toks)
        m.learn(np.arange(100))
    plain, _ = score_through_mixer(a, pos, logp, targets, ())
    probed, probes = score_through_mixer(b, pos, logp, targets, [0, 37, 38, 150])
    assert np.array_equal(plain, probed) and sorted(probes) == [100, 137, 138, 250]
    c.learn(pos[:37])
    ent = device_entropy(logp).numpy()
    # probe rows are renormalized in float64 (evalkit.engine.probes.probe_rows, the audit's one
    # float64 path), so the fast path agrees within float32 rounding, not to 1e-12
    want = c.distribution(137, probe_rows(logp[37:38])[0], float(ent[37]))
    assert np.array_equal(probes[137], want)
    assert probes[137][toks[137]] == pytest.approx(probed[37], abs=1e-5)
    assert a.stats()["positions"] == b.stats()["positions"] == pos.shape[0]


def test_device_entropy_is_the_float64_reference():
    from caches.predictors import row_entropy

    lp = _rows(5, 300, 2)
    lp[0, :10] = -float("inf")
    lp[0] = torch.log_softmax(lp[0], dim=-1)
    got, want = device_entropy(lp).numpy(), row_entropy(lp.numpy())
    print(f"OK, maxdiff = {np.abs(got - want).max():.3e} (torch float64 vs caches reference)")
    assert np.isfinite(got).all() and np.abs(got - want).max() <= 1e-12


def test_result_reports_where_the_cache_acted():
    model, info, data = random_model(tiny_config()), DistInfo(), repeating_data()
    result, _ = evaluate(model, data, build_strategy("sliding", opts(16)), info, "tilt:preset=records",
                         progress=False)
    s = result.summary()
    print({k: s[k] for k in ("ngram_stats", "ngram_acted", "ngram_hint_right")})
    assert s["ngram_stats"]["positions"] == result.tokens
    assert 0 < s["ngram_acted"] < 1 and 0 < s["ngram_hint_right"] <= 1
    plain, _ = evaluate(model, data, build_strategy("sliding", opts(16)), info, None, progress=False)
    assert "ngram_acted" not in plain.summary()


def test_a_cache_stays_inside_its_document_unless_documents_are_scored_in_stream_order():
    """Sliding scores in stream order: contexts run across a BOS. TTT scores documents
    longest first: each target's contexts stop at its own document's BOS, so the first
    targets of a document never read the one before it (not scored yet). The document
    owning a BOS target is the one before it (EvalData.doc_of_target)."""
    from evalkit.audit.selftest import opts_for
    from evalkit.engine.loop import context_start

    data = repeating_data()
    assert context_start(data, build_strategy("sliding", opts(4))) is None
    cs = context_start(data, build_strategy("ttt", opts_for([])))
    t = np.arange(data.n_tokens)
    assert (cs <= t).all() and (np.diff(cs) >= 0).all() and set(cs.tolist()) == set(data.doc_starts.tolist())
    b = int(data.doc_starts[2])
    assert cs[b] == data.doc_starts[1] and cs[b + 1] == b  # the BOS target reads its own document
    # two streams that differ only in the tail of the document before b's: in one it repeats
    # the tail before the first document's BOS, whose (tail, BOS) contexts the cache learned
    s1 = int(data.doc_starts[1])
    same, other = data.tokens.copy(), data.tokens.copy()
    same[b - 4:b] = data.tokens[s1 - 4:s1]
    other[b - 4:b] = 7
    learned, scored = np.arange(1, s1 + 6), np.arange(b + 1, b + 4)
    for starts, differ in ((cs, False), (None, True)):
        aux = []
        for toks in (same, other):
            mixer = parse_ngram_spec(1024, "mix:orders=2-5")
            mixer.bind(toks, starts)
            mixer.learn(learned)
            aux.append(mixer.advance(scored))
        equal = np.array_equal(aux[0].out_i, aux[1].out_i) and np.array_equal(aux[0].out_f, aux[1].out_f)
        assert equal is not differ, ("doc-local" if starts is not None else "stream", aux[0].out_f, aux[1].out_f)
