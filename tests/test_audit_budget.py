"""The one cost function (evalkit/engine/cost.py) as the audit and ablate use it: depth
recurrence, every extra pass, the split's size by vocabulary, and the files counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.audit.selftest import opts_for, synthetic_stream
from evalkit.audit.subject import Subject, counted_files, run_strategy
from evalkit.engine.cost import SPLIT_TOKENS, forward_flops, model_passes, projected_8xh100_seconds, split_size
from evalkit.engine.dist import DistInfo
from evalkit.model.gpt import estimate_forward_flops
from evalkit.strategies.registry import build_strategy
from tests.conftest import random_model, tiny_config


def test_depth_recurrence_is_counted() -> None:
    plain = tiny_config(num_layers=4)
    recur = tiny_config(num_layers=4, recur_start=1, recur_end=2, recur_times=2)  # 6 virtual layers
    head = 2 * plain.model_dim * plain.vocab_size
    layer = estimate_forward_flops(plain, 1, 32) - head
    assert forward_flops(plain, 1, 32) == pytest.approx(head + layer)
    assert forward_flops(recur, 1, 32) == pytest.approx(head + layer * 6 / 4)
    assert projected_8xh100_seconds(recur, {"name": "flat"}, 1) > projected_8xh100_seconds(plain, {"name": "flat"}, 1)


def test_split_size_by_vocabulary() -> None:
    assert split_size(1024) == 62_020_000 and split_size(8192) == 40_540_000
    assert split_size(4096, 123_456) == 123_456
    cfg = tiny_config(vocab_size=8192)
    one = projected_8xh100_seconds(cfg, {"name": "flat"}, 1000)
    assert one == pytest.approx(projected_8xh100_seconds(cfg, {"name": "flat"}, 1000, split_tokens=SPLIT_TOKENS[8192]))


def test_ttt_phases_and_real_lengths_add_passes() -> None:
    ttt = {"name": "ttt", "ttt_chunk": 32, "ttt_context": 512, "ttt_steps": 1}
    lengths = np.array([2000, 300, 40])
    base = model_passes(ttt, lengths)
    phased = model_passes({**ttt, "ttt_phases": "1,2", "ttt_phase_epochs": 2}, lengths)
    assert phased[0] == base[0] and phased[1] > base[1]
    # phases train 3 forward-equivalents a token on the first 1 and first 2 longest documents, twice
    assert phased[1] - base[1] == pytest.approx(3 * 2 * (2000 + 2300) / lengths.sum())
    cut = model_passes(ttt, np.minimum(lengths, 512))  # documents cut short undercount TTT's windows
    assert cut[0] < base[0]


def test_measured_passes_raise_a_plugins_cost() -> None:
    cfg = tiny_config()
    flat = projected_8xh100_seconds(cfg, {"name": "plugin:x"}, 1000)
    assert projected_8xh100_seconds(cfg, {"name": "plugin:x"}, 1000, passes=(3.0, 0.0)) == pytest.approx(3 * flat)


def test_counted_code_is_what_the_evaluation_ran() -> None:
    torch.set_num_threads(1)
    data, _ = synthetic_stream(n_docs=2, doc_len=100)
    subject = Subject("s", lambda: build_strategy("sliding", opts_for([])), random_model(tiny_config()),
                      DistInfo(0, 1, torch.device("cpu")), "mix:orders=2-3")
    run = run_strategy(subject, data, trace_code=True)
    names = {f"{f.parent.name}/{f.name}" for f in counted_files(run)}
    assert {"strategies/sliding.py", "engine/context.py", "engine/ledger.py", "model/gpt.py", "caches/mixer.py",
            "model/artifact.py"} <= names, names
    assert not any(n.startswith("audit/") and n.count("/") == 1 for n in names)  # the audit's own code is not counted
    assert run.forward_tokens > 0 and run.flops > 0 and run.mixer_seconds > 0
