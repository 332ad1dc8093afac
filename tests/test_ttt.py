"""`ttt`: score-first order, no step after the last chunk, per-document independence,
the ledger, phases, and a slow reference loop beside the batched implementation."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from evalkit.engine.dist import DistInfo
from evalkit.engine.context import EvalContext, EvalData
from evalkit.engine.loop import evaluate
from evalkit.errors import EvalkitError
from evalkit.engine.ledger import LedgerViolation
from evalkit.model.lora import AdapterSet
from evalkit.strategies.registry import add_common_args, build_strategy
from evalkit.strategies.ttt import plan_queue
from evalkit.engine.windows import document_ranges
from tests.conftest import random_model, tiny_config

DOC_LENS = (41, 30, 23, 9, 2, 17)  # tokens after each BOS; one document shorter than a chunk


def synth_data(lens=DOC_LENS, seed: int = 0) -> EvalData:
    rng = np.random.default_rng(seed)
    parts = [np.concatenate([[1], rng.integers(2, 1024, n)]) for n in lens]
    tokens = np.concatenate(parts).astype(np.uint16)
    starts = np.cumsum([0] + [n + 1 for n in lens[:-1]]).astype(np.int64)
    target_bytes = np.ones(tokens.size, dtype=np.int64)
    target_bytes[0] = 0
    return EvalData(tokens, target_bytes, starts)


def ttt_opts(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_common_args(p)
    base = ["--ttt-chunk", "8", "--ttt-context", "16", "--ttt-batch", "4", "--ttt-lr", "0.05",
            "--ttt-targets", "q,v,o,lm_head"]
    opts = p.parse_args(base + list(argv))
    opts.seed = 5
    return opts


def run_ttt(*argv: str, data: EvalData | None = None, model=None, mixer=None, info: DistInfo | None = None):
    model = model or random_model(tiny_config())
    data = data or synth_data()
    return evaluate(model, data, build_strategy("ttt", ttt_opts(*argv)), info or DistInfo(), mixer,
                    progress=False)


def reference_nll(model, data: EvalData, chunk: int, context: int, lr: float, seed: int) -> np.ndarray:
    """Slow per-document loop: score chunk c with the adapter after steps on chunks < c,
    full-window logits, batch 1, one AdamW step per chunk except the last."""
    nll = np.zeros(data.n_tokens)
    for d, (lo, hi) in enumerate(document_ranges(data.doc_starts, data.n_tokens)):
        adapters = AdapterSet(model, ("q", "v", "o", "lm_head"), 1, 8, 8.0)
        adapters.reset_rows([0], [seed * 1_000_003 + d])
        opt = torch.optim.AdamW(adapters.parameters(), lr=lr, weight_decay=0.0)
        with adapters.attached(model):
            for cs in range(lo, hi, chunk):
                ce = min(hi, cs + chunk)
                ws = max(lo, ce - context)
                idx = torch.from_numpy(data.tokens[ws - 1:ce - 1].astype(np.int64))[None]
                logp = torch.log_softmax(model(idx).float(), -1)[0, cs - ws:]
                tgt = torch.from_numpy(data.tokens[cs:ce].astype(np.int64))
                token_nll = -logp.gather(1, tgt[:, None])[:, 0]
                nll[cs:ce] = token_nll.detach().numpy()
                if ce < hi:
                    opt.zero_grad()
                    token_nll.mean().backward()
                    opt.step()
    return nll


def test_batched_ttt_matches_slow_reference_loop():
    model = random_model(tiny_config())
    for p in model.parameters():
        p.requires_grad_(False)
    want = reference_nll(model, synth_data(), chunk=8, context=16, lr=0.05, seed=5)
    _, ledger = run_ttt(model=model)
    diff = np.abs(ledger.nll - want).max()
    print(f"ttt vs reference maxdiff = {diff:.2e}")
    assert diff < 2e-5
    # stepping before scoring would move every score after the first chunk
    _, frozen = run_ttt("--ttt-lr", "0", model=model)
    assert np.abs(frozen.nll - want).max() > 1e-3


class RecordingContext(EvalContext):
    """Logs the order of score fixes and learning reads."""

    events: list = []

    def fix_scores(self, positions, logp, copy=True):
        RecordingContext.events.append(("score", np.asarray(positions).copy()))
        return super().fix_scores(positions, logp, copy)

    def tokens_for_learning(self, positions):
        RecordingContext.events.append(("learn", np.asarray(positions).copy()))
        return super().tokens_for_learning(positions)


def test_score_before_step_and_no_step_after_last_chunk(monkeypatch):
    import evalkit.engine.loop as engine

    RecordingContext.events = []
    monkeypatch.setattr(engine, "EvalContext", RecordingContext)
    data = synth_data()
    result, ledger = run_ttt("--ttt-steps", "2", data=data)
    scored_so_far: set[int] = set()
    for kind, pos in RecordingContext.events:
        if kind == "score":
            scored_so_far.update(pos.tolist())
        else:
            assert set(pos.tolist()) <= scored_so_far
    assert result.coverage["scored_once"] == data.n_tokens - 1
    for lo, hi in document_ranges(data.doc_starts, data.n_tokens):
        last = lo + ((hi - lo - 1) // 8) * 8
        assert (ledger.learn_count[last:hi] == 0).all(), "a document's last chunk was trained on"
        assert (ledger.learn_count[lo:last] == 1).all()


def test_document_score_independent_of_batch_mates():
    model = random_model(tiny_config())
    alone, _ = run_ttt("--ttt-batch", "1", model=model)
    together, _ = run_ttt("--ttt-batch", "6", model=model)
    other = synth_data(DOC_LENS[:3] + (30, 30, 30), seed=0)  # same first three documents, new mates
    mates, _ = run_ttt("--ttt-batch", "6", model=model, data=other)
    assert np.abs(alone.per_doc_nll - together.per_doc_nll).max() < 2e-5
    assert np.abs(alone.per_doc_nll[:3] - mates.per_doc_nll[:3]).max() < 2e-5


def test_zero_lr_equals_doc_isolated_sliding():
    model = random_model(tiny_config())
    data = synth_data()
    ttt, _ = run_ttt("--ttt-lr", "0", model=model, data=data)
    opts = ttt_opts("--seq-len", "16", "--stride", "8", "--doc-isolated")
    sliding, _ = evaluate(model, data, build_strategy("sliding", opts), DistInfo(), progress=False)
    assert abs(ttt.val_bpb - sliding.val_bpb) < 1e-6
    assert np.abs(ttt.per_doc_nll - sliding.per_doc_nll).max() < 1e-4


def test_learning_read_of_unscored_token_raises(monkeypatch):
    # A strategy whose score never reaches the ledger must be stopped at its first step.
    monkeypatch.setattr(EvalContext, "fix_scores", lambda self, positions, logp, copy=True: lambda: None)
    with pytest.raises(LedgerViolation, match=r"ttt read position 1 for learning"):
        run_ttt()


def test_warmup_uses_random_tokens_only():
    _, ledger = run_ttt("--ttt-warmup-steps", "2")
    assert [w["source"] for w in ledger.warmups] == ["random", "random"]
    assert ledger.learn_count.sum() > 0


def test_phases_train_then_restore_base_weights():
    model = random_model(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain, _ = run_ttt(model=model)
    phased, ledger = run_ttt("--ttt-phases", "2,4", "--ttt-phase-group", "1", "--ttt-phase-lr", "0.2",
                             model=model)
    assert phased.coverage["scored_once"] == phased.coverage["targets"]
    order = [d for seg in plan_queue(synth_data().doc_starts, synth_data().n_tokens, 4, [2, 4]).segments
             for b in seg for d, _, _ in b]
    late = order[2:]  # documents scored after the first phase
    assert np.abs(phased.per_doc_nll[late] - plain.per_doc_nll[late]).max() > 1e-4
    assert np.allclose(phased.per_doc_nll[order[:2]], plain.per_doc_nll[order[:2]], atol=2e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad is False for p in model.parameters())


def test_peft_lora_phase_merges_and_unwraps():
    model = random_model(tiny_config())
    keys = sorted(model.state_dict())
    plain, _ = run_ttt(model=model)
    phased, _ = run_ttt("--ttt-phases", "3", "--ttt-phase-mode", "lora", "--ttt-phase-lr", "0.5",
                        "--ttt-phase-rank", "2", model=model)
    assert sorted(model.state_dict()) == keys  # peft layers are gone again
    assert abs(phased.val_bpb - plain.val_bpb) > 1e-6


def test_composes_with_ngram_mixer():
    pytest.importorskip("caches.mixer")
    model = random_model(tiny_config())
    alone, _ = run_ttt(model=model)
    mixed, _ = run_ttt(model=model, mixer="mix:orders=2-3")
    assert mixed.label.startswith("ttt+") and mixed.coverage["scored_once"] == mixed.coverage["targets"]
    assert abs(mixed.val_bpb - alone.val_bpb) > 1e-6


def test_queue_is_longest_first_and_cut_at_phases():
    data = synth_data()
    q = plan_queue(data.doc_starts, data.n_tokens, 2, [3])
    lens = [hi - lo for seg in q.segments for b in seg for _, lo, hi in b]
    assert lens == sorted(lens, reverse=True)
    assert [len(b) for b in q.segments[0]] == [2, 1] and [len(b) for b in q.segments[1]] == [2, 1]


@pytest.mark.parametrize("argv, flag", [(("--ttt-context", "4"), "--ttt-context"),
                                        (("--ttt-phases", "5,3"), "--ttt-phases"),
                                        (("--ttt-targets", "q v"), "--ttt-targets"),
                                        (("--ttt-steps", "0"), "--ttt-steps")])
def test_bad_flags_raise_evalkit_error(argv, flag):
    with pytest.raises(EvalkitError, match=flag):
        build_strategy("ttt", ttt_opts(*argv))
