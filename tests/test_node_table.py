"""One n-gram table per node (evalkit/engine/nodetable.py), with 2-3 gloo processes on CPU.

- scores are bitwise the one-process scores; the owner (local rank 0) alone holds a table
  and runs the Numba kernels, the other ranks report 0 table bytes and compiled nothing;
- no shared-memory name outlives a run, a failed pass, an owner whose run raised, or an
  owner killed mid-run; the ranks waiting on it raise instead of hanging;
- bad input stays one line on every rank;
- mixers whose aux agree share one pass; the audit's path (its own mixer) scores the same.
"""
from __future__ import annotations

import os
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evalkit.audit.selftest import opts_for
from evalkit.engine import probes
from evalkit.engine.dist import DistInfo, all_reduce_sum
from evalkit.engine.fanout import evaluate_many
from evalkit.engine.loop import evaluate, make_scorers
from evalkit.errors import EvalkitError
from evalkit.strategies.registry import build_strategy
from tests.conftest import free_port, join_gloo, random_model, tiny_config
from tests.test_invariance import PHASES, phrase_data

TILT, MIX = "tilt:orders=2-4", "mix:orders=2-4"
CASES = [("sliding", ["--batch-windows", "3"], TILT), ("ttt", PHASES, MIX)]


def run_case(strategy: str, flags: list[str], spec: str | None, info: DistInfo):
    opts = opts_for(["--seq-len", "32", "--stride", "8", *flags])
    model = random_model(tiny_config(train_seq_len=32))
    return evaluate(model, phrase_data(), build_strategy(strategy, opts), info, spec, progress=False)



def _worker(rank: int, world: int, port: int, shm: str, mode: str, out: str) -> None:
    os.environ["EVALKIT_SHM_DIR"] = shm
    join_gloo(rank, world, port, timeout_s=90)
    info = DistInfo(rank, world, torch.device("cpu"))
    got: dict = {}
    try:
        if mode == "scores":
            import caches.kernels as K

            for i, (strategy, flags, spec) in enumerate(CASES):
                result, ledger = run_case(strategy, flags, spec, info)
                got[f"nll{i}"] = all_reduce_sum(ledger.nll, info)
                got[f"table{i}"] = result.mixer_memory_bytes  # this rank's
                got[f"left{i}"] = len(os.listdir(shm))
                got[f"positions{i}"] = result.mixer_stats["positions"]
            got["compiled"] = len(K.advance_kernel.signatures)
            for bad in ("tilt:orders=2-99", "tilt:beta=x"):  # bad input: one line, every rank, no hang
                try:
                    run_case("sliding", [], bad, info)
                except EvalkitError as e:
                    got[f"error:{bad}"] = str(e)
        elif mode == "pass_fails":  # the owner's pass raises part-way: every rank hears of it
            from caches.mixer import NgramMixer

            real = NgramMixer.advance

            def advance(self, positions):
                if self._counts[0] > 100:
                    raise ValueError("disk on fire")
                return real(self, positions)

            NgramMixer.advance = advance
            import evalkit.engine.nodetable as nt
            nt.FIRST_CHUNK = 64
            try:
                run_case("sliding", ["--batch-windows", "2"], TILT, info)
            except (RuntimeError, ValueError) as e:
                got["error"] = f"{type(e).__name__}: {e}"
            import time

            def slow(self, positions):  # the pass lasts ~1 s: the owner's run surely ends first
                time.sleep(0.2)
                return real(self, positions)

            NgramMixer.advance = slow
            from evalkit.strategies.sliding import Sliding

            run = Sliding.run

            def raising(self, ctx):  # the owner's own run stops early: its pass stops, the others hear of it
                if ctx.info.rank == 0:
                    raise KeyError("owner gave up")
                return run(self, ctx)

            Sliding.run = raising
            try:
                run_case("sliding", ["--batch-windows", "2"], TILT, info)
            except (RuntimeError, KeyError) as e:
                got["stopped"] = f"{type(e).__name__}: {e}"
        elif mode == "owner_dies":  # the owner process is killed mid-run: the other ranks raise
            from evalkit.engine.nodetable import NodePass

            # killed inside its table pass, before it publishes a row: killed later (once a
            # small pass is done) the others would meet the death in a gloo collective instead
            def dying(self):
                os._exit(3)

            NodePass._run = dying
            try:
                run_case("sliding", [], TILT, info)
            except RuntimeError as e:
                got["error"] = str(e)
        got["left"] = len(os.listdir(shm))
    except BaseException:
        got["crash"] = traceback.format_exc()
    np.save(f"{out}.{rank}.npy", got, allow_pickle=True)
    if mode != "owner_dies":
        dist.destroy_process_group()


def spawn(tmp_path, world: int, mode: str) -> list[dict]:
    shm = tmp_path / f"shm-{mode}"
    shm.mkdir()
    out = str(tmp_path / mode)
    ctx = mp.spawn(_worker, args=(world, free_port(), str(shm), mode, out), nprocs=world, join=False)
    for p in ctx.processes:  # in rank order, each reaped as it ends (a dead owner is no zombie)
        p.join(120)
    codes = [p.exitcode for p in ctx.processes]
    assert codes == ([3] + [0] * (world - 1) if mode == "owner_dies" else [0] * world), codes
    files = [f"{out}.{r}.npy" for r in range(world)]
    got = [np.load(f, allow_pickle=True).item() for f in files if os.path.exists(f)]
    for g in got:
        assert "crash" not in g, g["crash"]
    assert not os.listdir(shm), os.listdir(shm)  # no name left behind
    return got


@pytest.mark.parametrize("world", [3])
def test_ranks_score_as_one_process_from_one_table(tmp_path, world):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ranks = spawn(tmp_path, world, "scores")
    for i, case in enumerate(CASES):
        want, _ = run_case(*case, DistInfo())
        _, ledger = run_case(*case, DistInfo())
        nll = ranks[0][f"nll{i}"]
        print(f"{case[0]}+{case[2]} on {world} processes: maxdiff {np.abs(nll - ledger.nll).max():.1e}")
        assert np.array_equal(nll, ledger.nll), case
        assert ranks[0][f"table{i}"] == want.mixer_memory_bytes > 0  # the owner holds the one table
        assert all(r[f"table{i}"] == 0 for r in ranks[1:])  # the others none
        assert ranks[0][f"positions{i}"] == want.mixer_stats["positions"] == phrase_data().n_tokens - 1
        assert all(r[f"left{i}"] == 0 for r in ranks)  # unlinked once every rank had mapped it
    assert ranks[0]["compiled"] > 0 and all(r["compiled"] == 0 for r in ranks[1:])  # Numba on the owner only
    for r in ranks:
        assert r["error:tilt:orders=2-99"].startswith("--ngram 'tilt:orders=2-99': bad value '2-99'")
        assert r["error:tilt:beta=x"].startswith("--ngram 'tilt:beta=x': bad value 'x'")
        assert all("\n" not in v for k, v in r.items() if k.startswith("error"))


def test_a_failed_pass_reaches_every_rank_and_leaves_nothing(tmp_path):
    ranks = spawn(tmp_path, 2, "pass_fails")
    assert ranks[0]["error"] == "ValueError: disk on fire"  # the owner re-raises its pass's own error
    assert "the node's n-gram pass failed: ValueError: disk on fire" in ranks[1]["error"]
    assert ranks[0]["stopped"] == "KeyError: 'owner gave up'"
    assert "the node's n-gram pass failed: the owner's run ended at step" in ranks[1]["stopped"]


def test_an_owner_killed_mid_run_stops_the_others(tmp_path):
    ranks = spawn(tmp_path, 2, "owner_dies")
    (rank1,) = ranks
    assert "n-gram owner (pid" in rank1["error"] and "exited" in rank1["error"]


def test_mixers_with_the_same_aux_share_one_pass_and_score_as_alone():
    model, data = random_model(tiny_config(train_seq_len=32)), phrase_data()
    specs = [None, "tilt:orders=2-4,beta=1", "tilt:orders=2-4,beta=2.5", MIX]
    strategy = build_strategy("sliding", opts_for(["--seq-len", "32", "--stride", "8"]))
    scorers = make_scorers(model, data, strategy, specs, DistInfo())
    try:
        assert scorers[1][1].shared is scorers[2][1].shared and scorers[3][1].shared is not scorers[1][1].shared
    finally:
        from evalkit.engine.nodetable import close
        close([t for _, t in scorers])
    runs = evaluate_many(model, data, strategy, DistInfo(), specs, progress=False)
    for spec, run in zip(specs, runs):
        alone, ledger = evaluate(model, data, strategy, DistInfo(), spec, progress=False)
        assert np.array_equal(run.ledger.nll, ledger.nll) and run.result.mixer_stats == alone.mixer_stats, spec
    assert runs[1].result.val_bpb != runs[2].result.val_bpb


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_audits_own_mixer_scores_as_the_node_table(case):
    # the audit captures probes, so it scores through this process's own mixer (state at the moment)
    node, node_ledger = run_case(*case, DistInfo())
    with probes.capture():
        own, own_ledger = run_case(*case, DistInfo())
    assert np.array_equal(node_ledger.nll, own_ledger.nll)
    assert (node_ledger.cache_seq >= 0).sum() == (own_ledger.cache_seq >= 0).sum() == phrase_data().n_tokens - 1
    assert node.mixer_stats == own.mixer_stats and node.mixer_memory_bytes == own.mixer_memory_bytes


def test_a_plugin_without_learning_order_needs_it_under_torchrun():
    class NoOrder:
        label = "mine"

    with pytest.raises(EvalkitError, match="mine under torchrun: the strategy needs a learning_order"):
        make_scorers(random_model(tiny_config()), phrase_data(), NoOrder(), [TILT], DistInfo(0, 2))


@pytest.mark.parametrize("change,match", [
    (lambda order: order[:-5], "scored position .*not in the strategy's learning_order"),
    (lambda order: np.concatenate([order, order[:1]]), "C4 single pass: sliding's learning_order holds position"),
], ids=["omits", "repeats"])
def test_a_learning_order_that_is_not_the_scoring_order_is_stopped(change, match):
    from evalkit.engine.ledger import LedgerViolation
    from evalkit.strategies.sliding import Sliding

    class Declares(Sliding):
        def learning_order(self, data):
            return change(super().learning_order(data))

    with pytest.raises(LedgerViolation, match=match):
        evaluate(random_model(tiny_config(train_seq_len=32)), phrase_data(),
                 Declares(opts_for(["--seq-len", "32", "--stride", "8"])), DistInfo(), TILT, progress=False)


def test_a_cache_that_learns_a_position_nobody_scores_is_stopped():
    # the learning order holds every target, the run skips the last window: the cache
    # learned tokens that were never scored (and could have shaped later scores)
    from evalkit.engine.ledger import LedgerViolation
    from evalkit.strategies.sliding import Sliding, run_windows

    class Skips(Sliding):
        def run(self, ctx):
            ctx.model.set_context_len(self.opts.seq_len)
            run_windows(ctx, self.plan(ctx.data)[:-1], 4)

    with pytest.raises(LedgerViolation, match="C3 score before update: sliding\\+tilt's cache learned position \\d+ "
                                              "\\(step \\d+ of its learning order\\), which no rank scored"):
        evaluate(random_model(tiny_config(train_seq_len=32)), phrase_data(),
                 Skips(opts_for(["--seq-len", "32", "--stride", "8"])), DistInfo(), TILT, progress=False)
