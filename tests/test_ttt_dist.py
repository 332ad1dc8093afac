"""Two gloo processes on CPU reproduce the one-process `ttt` run (with and without global
phases) within 1e-6, and every token is scored exactly once."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evalkit.engine.dist import DistInfo
from tests.conftest import free_port, join_gloo, random_model, tiny_config
from tests.test_ttt import run_ttt, synth_data

LENS = (41, 30, 23, 9, 2, 17, 35, 12, 26)
CASES = {"plain": ("--ttt-batch", "2"),
         "phases": ("--ttt-batch", "2", "--ttt-phases", "3,6", "--ttt-phase-group", "2", "--ttt-phase-lr", "0.2")}



def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    join_gloo(rank, world, port)
    try:
        for name, argv in CASES.items():
            result, _ = run_ttt(*argv, data=synth_data(LENS), model=random_model(tiny_config()),
                                info=DistInfo(rank, world, torch.device("cpu")))
            if rank == 0:
                np.save(f"{out_dir}/{name}.npy", result.per_doc_nll)
                with open(f"{out_dir}/{name}.json", "w") as f:
                    json.dump(result.coverage, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    # the phases really trained (else the second case would prove nothing new)
    assert np.abs(np.load(tmp_path / "phases.npy") - np.load(tmp_path / "plain.npy")).max() > 1e-4
    for name, argv in CASES.items():
        one, _ = run_ttt(*argv, data=synth_data(LENS), model=random_model(tiny_config()))
        two = np.load(tmp_path / f"{name}.npy")
        cov = json.loads((tmp_path / f"{name}.json").read_text())
        diff = float(np.abs(two - one.per_doc_nll).max())
        print(f"{name}: 2 procs vs 1 maxdiff = {diff:.2e}")
        assert diff < 1e-6
        assert cov["scored_once"] == cov["targets"] and cov["rescored"] == 0 and cov["unscored"] == 0
