"""The head and log-softmax on scored rows only: same NLLs as the all-positions path.

The reference runs the model's plain forward (head at every position) one window at a
time and picks the scored rows afterwards, as the engine did before.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from evalkit.engine.context import EvalData
from evalkit.engine.dist import DistInfo
from evalkit.engine.loop import evaluate
from evalkit.engine.windows import plan_sliding
from evalkit.model.gpt import flash_dtype
from evalkit.strategies.registry import build_strategy
from tests.conftest import random_model, tiny_config


def stream(n: int, vocab: int, seed: int = 0) -> EvalData:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, vocab, n).astype(np.uint16)
    tokens[::97] = 1
    return EvalData(tokens, np.ones(n, dtype=np.int64), np.flatnonzero(tokens == 1))


def all_rows_reference(model, data: EvalData, seq_len: int, stride: int) -> np.ndarray:
    """(N,) NLL per target from the full (T, V) log-softmax of every window."""
    nll = np.zeros(data.n_tokens)
    with torch.inference_mode():
        for w in plan_sliding(data.n_tokens, seq_len, stride):
            idx = torch.from_numpy(data.tokens[w.start - 1:w.end - 1].astype(np.int64))[None]
            logp = torch.log_softmax(model(idx).float(), dim=-1)[0]  # (T, V)
            tgt = torch.from_numpy(data.tokens[w.score_from:w.end].astype(np.int64))
            rows = logp[w.score_from - w.start:w.length]
            nll[w.score_from:w.end] = -rows.gather(1, tgt[:, None])[:, 0].double().numpy()
    return nll


@pytest.mark.parametrize("features", [{}, dict(bigram_buckets=64, smear_gate=True, tie_embeddings=False,
                                                 gated_attn=True, rope_dims=8)], ids=["baseline", "features"])
@pytest.mark.parametrize("batch_windows", [1, 5])
def test_sliding_scored_rows_equal_all_positions(features, batch_windows):
    cfg = tiny_config(**features)
    model = random_model(cfg)
    data = stream(700, cfg.vocab_size)
    opts = argparse.Namespace(seq_len=64, stride=16, batch_windows=batch_windows, doc_isolated=False,
                              drop_tail=False)
    _, ledger = evaluate(model, data, build_strategy("sliding", opts), DistInfo(), progress=False)
    ref = all_rows_reference(model, data, 64, 16)
    diff = np.abs(ledger.nll[1:] - ref[1:]).max()
    print(f"max |nll(scored rows) - nll(all rows)| = {diff:.3e}")
    assert diff <= 1e-5 and np.all(ledger.score_count[1:] == 1)


def test_model_log_probs_rows_are_the_selected_rows():
    model = random_model(tiny_config(vocab_size=512))
    idx = torch.randint(0, 512, (3, 40), generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([0, 39, 40, 77, 119])
    with torch.inference_mode():
        full = model.log_probs(idx).reshape(-1, 512)  # (B*T, V)
        some = model.log_probs(idx, rows)  # (n, V)
        plain = torch.log_softmax(model(idx).float(), -1).reshape(-1, 512)
    assert some.shape == (5, 512) and some.dtype == torch.float32
    print(f"rows vs all-rows max diff {float((some - full[rows]).abs().max()):.3e}")
    assert torch.allclose(some, full[rows], atol=1e-5, rtol=0)
    assert torch.equal(full, plain)  # on CPU the fp32 head is the plain head


def test_fp32_head_under_autocast():
    """Under bf16 autocast the scoring head still gives float32 logits; the plain head bf16."""
    model = random_model(tiny_config())
    h = torch.randn(4, 64)
    with torch.autocast("cpu", torch.bfloat16):
        assert model.head(h).dtype == torch.bfloat16
        logits = model.head(h, fp32=True)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, model.head(h), atol=1e-6)


def test_flash_dtype_follows_autocast():
    """The flash-attn branch is taken under autocast even when QK-norm hands it float32."""
    q = torch.randn(1, 2, 4, 8)
    assert flash_dtype(q) is None  # plain float32: SDPA
    assert flash_dtype(q.bfloat16()) == torch.bfloat16
    with torch.autocast("cpu", torch.bfloat16):
        assert flash_dtype(q) == torch.bfloat16
