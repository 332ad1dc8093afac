"""One artifact, one strategy, one number.

- Per-position NLLs are bitwise identical for --batch-windows 1, 4, 16, 64 and for 1, 2
  and 4 gloo processes, for every built-in strategy, mixer and composition (the node's
  one n-gram cache learns in the plan's order, whichever rank scores a position).
- A window's logits are bitwise the same alone, right-padded and batched with others,
  with every position-dependent feature on (RoPE from configured lengths).
- Every ordered pair of strategies runs in one process on one model and gives the
  numbers each gives alone (no state, inference-mode tensors included, leaks across).
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evalkit.audit.selftest import opts_for
from evalkit.data.shards import doc_starts
from evalkit.engine.context import EvalData
from evalkit.engine.dist import DistInfo, all_reduce_sum
from evalkit.engine.loop import evaluate
from evalkit.strategies.registry import build_strategy
from tests.conftest import free_port, join_gloo, random_model, tiny_config

MIX, TILT = "mix:orders=2-4", "tilt:orders=2-4"
TTT = ["--ttt-chunk", "8", "--ttt-context", "32", "--ttt-batch", "2", "--ttt-lr", "0.05"]
PHASES = TTT + ["--ttt-phases", "4", "--ttt-phase-group", "1", "--ttt-phase-lr", "0.2"]
CASES = {  # name -> (strategy, flags, mixer)
    "flat": ("flat", [], None),
    "sliding": ("sliding", [], None),
    "sliding(doc)": ("sliding", ["--doc-isolated"], None),
    "flat+mix": ("flat", [], MIX),
    "flat+tilt": ("flat", [], TILT),
    "sliding+mix": ("sliding", [], MIX),
    "sliding+tilt": ("sliding", [], TILT),
    "sliding(doc)+mix": ("sliding", ["--doc-isolated"], MIX),
    "ttt": ("ttt", TTT, None),
    "ttt+phases": ("ttt", PHASES, None),
    "ttt+mix": ("ttt", TTT, MIX),
    "ttt+phases+tilt": ("ttt", PHASES, TILT),
}
BATCHES = (1, 4, 16, 64)
LENS = (41, 30, 23, 9, 2, 17, 35, 12, 26, 50)


def phrase_data(lens=LENS, seed: int = 0) -> EvalData:
    """Documents of phrases from a small phrase book, so n-gram contexts repeat as in text."""
    rng = np.random.default_rng(seed)
    book = [rng.integers(2, 1024, size=rng.integers(3, 9)) for _ in range(12)]
    parts = []
    for n in lens:
        body: list[int] = []
        while len(body) < n:
            body.extend(book[int(rng.integers(len(book)))].tolist())
        parts.append([1] + body[:n])
    tokens = np.array([t for p in parts for t in p], dtype=np.uint16)
    target_bytes = np.ones(tokens.size, dtype=np.int64)
    target_bytes[0] = 0
    return EvalData(tokens, target_bytes, doc_starts(tokens))


def case_nll(name: str, batch_windows: int, info: DistInfo, model=None) -> np.ndarray:
    """float64 (N,) NLL of every position, summed over ranks (each scored on exactly one)."""
    strategy, flags, mixer = CASES[name]
    opts = opts_for(["--seq-len", "32", "--stride", "8", "--batch-windows", str(batch_windows), *flags])
    model = model or random_model(tiny_config(train_seq_len=32))
    data = phrase_data()
    result, ledger = evaluate(model, data, build_strategy(strategy, opts), info, mixer, progress=False)
    assert result.coverage["scored_once"] == result.coverage["targets"] == data.n_tokens - 1, name
    # the all-reduce left this rank's own counts alone (gloo used to reduce them in place)
    assert np.array_equal(ledger.score_count > 0, ledger.score_event >= 0) and ledger.score_count.max() <= 1
    return all_reduce_sum(ledger.nll, info)



def _worker(rank: int, world: int, port: int, out: str) -> None:
    join_gloo(rank, world, port)
    try:
        info = DistInfo(rank, world, torch.device("cpu"))
        got = {f"{name}|{bw}": case_nll(name, bw, info) for name in CASES for bw in (4,)}
        if rank == 0:
            np.savez(out, **got)
    finally:
        dist.destroy_process_group()


def test_nll_identical_for_every_batch_size_and_process_count(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    want = {name: case_nll(name, 1, DistInfo()) for name in CASES}
    for name, bw in itertools.product(CASES, BATCHES[1:]):
        if CASES[name][0] == "ttt" and bw != BATCHES[-1]:
            continue  # ttt's plan never reads --batch-windows: the extremes suffice
        got = case_nll(name, bw, DistInfo())
        assert np.array_equal(got, want[name]), f"{name} --batch-windows {bw}: maxdiff {np.abs(got - want[name]).max()}"
    for world in (2, 4):
        out = tmp_path / f"world{world}.npz"
        mp.spawn(_worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
        got = np.load(out)
        for key in got.files:
            name = key.split("|")[0]
            diff = np.abs(got[key] - want[name]).max()
            print(f"{key} on {world} processes: maxdiff {diff:.1e}")
            assert np.array_equal(got[key], want[name]), f"{key} on {world} processes: maxdiff {diff}"
    # the mixers, the phases and TTT really act (else equality would prove less)
    for a, b in [("sliding", "sliding+mix"), ("sliding", "sliding+tilt"), ("ttt", "ttt+mix"), ("ttt", "ttt+phases"),
                 ("sliding", "ttt"), ("sliding", "sliding(doc)")]:
        assert np.abs(want[a] - want[b]).max() > 1e-4, (a, b)


FEATURES = [dict(), dict(rope_ntk=True), dict(rope_dims=8, smear_gate=True, smear_window=4, bigram_buckets=64,
                                             xsa_last_n=1, gated_attn=True, pre_enrich_hidden=32, mlp_act="leaky_relu2",
                                             recur_start=0, recur_end=1, recur_times=2)]


@pytest.mark.parametrize("features", FEATURES, ids=["baseline", "ntk", "features"])
def test_window_logits_bitwise_alone_padded_batched(features):
    model = random_model(tiny_config(train_seq_len=32, **features))
    model.set_context_len(96)  # beyond train_seq_len: NTK scaling is on where configured
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, 1024, (4, 160), generator=g)
    with torch.inference_mode():
        for T, P in [(1, 7), (30, 32), (30, 64), (70, 96), (100, 160), (64, 65)]:
            alone = model(x[:1, :T])
            padded = torch.zeros(1, P, dtype=torch.long)
            padded[0, :T] = x[0, :T]
            batch = x[:, :P].clone()
            batch[0, T:] = 0
            for other in (model(padded)[:, :T], model(batch)[:1, :T]):
                assert torch.equal(alone, other), f"T={T} P={P}: maxdiff {(alone - other).abs().max():.2e}"


def test_every_pair_of_strategies_in_one_process():
    names = ["flat", "sliding", "ttt", "ttt+phases"]
    fresh = {n: case_nll(n, 4, DistInfo()) for n in names}
    for a, b in itertools.permutations(names, 2):
        model = random_model(tiny_config(train_seq_len=32))
        first = case_nll(a, 4, DistInfo(), model)
        second = case_nll(b, 4, DistInfo(), model)
        assert np.array_equal(first, fresh[a]) and np.array_equal(second, fresh[b]), (a, b)


def test_tables_made_while_scoring_are_safe_for_backward():
    # `--strategy flat --strategy ttt` crashed: RoPE tables cached under inference_mode were
    # then saved for TTT's backward ("Inference tensors cannot be saved for backward")
    model = random_model(tiny_config(train_seq_len=32))
    x = torch.randint(2, 1024, (2, 8))
    with torch.inference_mode():
        model(x)
    model(x).float().logsumexp(-1).mean().backward()
    assert model.blocks[0].attn.c_q.weight.grad is not None


def test_a_cache_that_learns_ahead_is_stopped():
    # a strategy whose learning order puts the next batch before this one gets aux for this
    # batch from a state that already holds the next batch's tokens, scored only later:
    # the ledger stops it where the later batch is scored
    from evalkit.engine.ledger import LedgerViolation
    from evalkit.strategies.sliding import Sliding, scored_positions

    class Ahead(Sliding):
        def learning_order(self, data):
            windows = self.plan(data)
            pairs = [windows[i + 4:i + 8] + windows[i:i + 4] for i in range(0, len(windows), 8)]
            return scored_positions([w for pair in pairs for w in pair])

    opts = opts_for(["--seq-len", "32", "--stride", "8", "--batch-windows", "4"])
    with pytest.raises(LedgerViolation, match="C3 score before update: sliding\\+mix scored position"):
        evaluate(random_model(tiny_config(train_seq_len=32)), phrase_data(), Ahead(opts), DistInfo(), MIX,
                 progress=False)
