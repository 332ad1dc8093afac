"""The trainer: presets, overrides, the C6 guard, averaging, and short end-to-end runs
that export artifacts the engine loads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.model.artifact import load_artifact
from evalkit.data.shards import write_shard
from evalkit.errors import EvalkitError
from evalkit.engine.inputs import load_model
from tests.conftest import VAL1024, require_shared
from trainer.averaging import EMA, SWA
from trainer.config import available, load_preset, parse_override
from trainer.train import main, train_tokens

PRESETS = ["demo", "pr198", "pr372", "pr451", "pr810", "pr1938", "pr1938-fit"]
PUBLISHED_PARAMS = {"pr198": 26.8e6, "pr451": 25.5e6, "pr1938": 35.95e6}  # from the PR descriptions


def test_every_preset_ships_and_loads():
    assert set(PRESETS) <= set(available())
    for name in PRESETS:
        scales = [None] if name == "demo" else ["tiny", "full"]
        for scale in scales:
            p = load_preset(name, scale)
            assert p.model.vocab_size >= 1024


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_full_scale_parameter_count_matches_the_recipe(name):
    from evalkit.model.gpt import GPT
    with torch.device("meta"):  # count without allocating 30M floats
        n = GPT(load_preset(name, "full").model).num_params()
    assert abs(n - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.005


def test_overrides_and_unknown_keys():
    p = load_preset("demo", None, ["max_seconds=7", "model.num_layers=3", "compressor=zstd", "rules=[['x', 6]]"])
    assert (p.train.max_seconds, p.model.num_layers, p.export.compressor) == (7, 3, "zstd")
    assert p.export.rules == [["x", 6]]
    assert parse_override("train.ema_decay=0.99") == ("train", "ema_decay", 0.99)
    for bad in ("nonsense=1", "model.max_seconds=3", "foo.bar=1", "no_equals"):
        with pytest.raises(EvalkitError):
            load_preset("demo", None, [bad])
    with pytest.raises(EvalkitError, match="no such preset"):
        load_preset("pr999")
    with pytest.raises(EvalkitError, match="scale"):
        load_preset("demo", "tiny")


def test_train_glob_refuses_validation_shards(tmp_path):
    write_shard(tmp_path / "x_val_000000.bin", np.array([1, 5, 6], np.uint16))
    with pytest.raises(EvalkitError, match="C6"):
        train_tokens(str(tmp_path / "*.bin"))


def test_ema_and_swa():
    m = torch.nn.Linear(2, 2, bias=False)
    ema = EMA(m, 0.5)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update(m)
    assert torch.allclose(ema.state_dict()["weight"], w0 + 1.0)
    swa = SWA(every=2, start_scale=0.5)
    swa.maybe_update(m, step=2, scale=0.9)  # LR still high: skipped
    assert swa.state_dict() is None
    swa.maybe_update(m, step=2, scale=0.4)
    with torch.no_grad():
        m.weight.add_(2.0)
    swa.maybe_update(m, step=3, scale=0.3)  # not on the period: skipped
    swa.maybe_update(m, step=4, scale=0.3)
    assert swa.count == 2 and torch.allclose(swa.state_dict()["weight"], w0 + 3.0)


TINY = ["model.num_layers=2", "model.model_dim=64", "train_seq_len=64", "batch_tokens=256", "iterations=3",
        "max_seconds=60"]


@pytest.fixture
def train_glob(tmp_path):
    require_shared()
    from evalkit.data.shards import read_shard
    write_shard(tmp_path / "t_train_000000.bin", read_shard(VAL1024)[:20000])
    return str(tmp_path / "t_train_*.bin")


@pytest.mark.parametrize("preset,extra", [
    ("demo", []),
    # d=192 so that MLP matrices exceed evalkit's keep-float size and QAT really runs
    ("pr372", ["xsa_last_n=1", "keep_fp16=['tok_emb.weight']", "qat_start_frac=0.0", "ema_decay=0.9",
               "model_dim=192", "num_heads=4", "num_kv_heads=2"]),
    ("pr1938", ["vocab_size=1024", "num_layers=3", "num_heads=4", "num_kv_heads=2", "model_dim=192", "recur_start=1", "recur_end=1", "skip_from_layer=2",
                "gptq_batches=2", "reserve_seconds=0", "lqer_tensors=2"]),
])
def test_end_to_end_exports_a_loadable_artifact(tmp_path, train_glob, preset, extra):
    out = tmp_path / "a.ptz"
    assert main(["--preset", preset, "--train", train_glob, "--out", str(out), "--quiet", *TINY, *extra]) == 0
    art = load_artifact(out)
    assert art.header["meta"]["stats"]["steps"] == 3 and art.header["meta"]["git"]
    model = load_model(str(out), torch.device("cpu")).model
    assert model(torch.tensor([[1, 5, 9, 7]])).shape == (1, 4, 1024)
    if preset == "pr1938":
        lowrank = [r["name"] for r in art.header["tensors"] if "lowrank" in r]
        assert len(lowrank) == 2
    if preset == "pr372":
        kinds = {r["name"]: r["kind"] for r in art.header["tensors"]}
        assert kinds["tok_emb.weight"] == "f16" and kinds["blocks.0.mlp.fc.weight"] == "q"


def test_cli_errors_exit_2(tmp_path, train_glob, capsys):
    assert main(["--preset", "demo", "--train", train_glob, "--out", str(tmp_path / "a.ptz"), "bogus=1"]) == 2
    assert capsys.readouterr().err.startswith("error: override")
    assert main(["--preset", "demo", "--train", str(tmp_path / "none_*.bin"), "--out", "x.ptz"]) == 2
