"""What a newcomer meets first: the thread policy, the demo's step-based training, the
tokenizer identity check, lengths that follow the artifact, and errors that say what to do."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from evalkit.cli import set_threads, thread_policy
from evalkit.data.shards import read_shard, write_shard
from evalkit.errors import EvalkitError
from evalkit.model.artifact import TOKENIZER_META, read_header
from tests.conftest import SHARED, SP1024, VAL1024, require_shared

OTHER1024 = SHARED / "tokenizers" / "other" / "fineweb_1024_bpe_nofallback.model"


# ---------------------------------------------------------------- threads


def test_thread_policy(monkeypatch) -> None:
    monkeypatch.setattr("evalkit.cli.usable_cores", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (0.5, 0.5, 0.5))
    assert thread_policy(None)[0] == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert thread_policy(None)[0] == 2  # cores shared among the local ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert thread_policy(None)[0] == 1
    monkeypatch.setattr("os.getloadavg", lambda: (4.2, 1.0, 1.0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    n, why = thread_policy(None)
    assert n == 1 and "busy" in why  # oversubscribing a busy CPU is slower than one thread
    assert thread_policy(3) == (3, "--threads")
    with pytest.raises(EvalkitError, match="--threads 0: must be >= 1"):
        thread_policy(0)


def test_set_threads_prints_one_line(capsys) -> None:
    before = torch.get_num_threads()
    try:
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        assert capsys.readouterr().err == "threads: 2 (--threads)\n"
        set_threads(None)
        assert capsys.readouterr().err.count("\n") == 1
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- training by steps


@pytest.fixture
def train_dir(tmp_path) -> Path:
    """Training shards with data prepare's tokenizer record beside them (sp1024)."""
    require_shared()
    from evalkit.data.tokenizer import write_record

    d = tmp_path / "data"
    d.mkdir()
    write_shard(d / "t_train_000000.bin", read_shard(VAL1024)[:20000])
    shutil.copyfile(VAL1024, d / "t_val_000000.bin")
    shutil.copyfile(SP1024, d / "tokenizer.model")
    write_record(d, "t", d / "tokenizer.model", 1024)
    return d


TINY = ["--quiet", "--threads", "1", "num_layers=1", "model_dim=32", "num_heads=2", "num_kv_heads=1",
        "train_seq_len=64", "batch_tokens=256", "warmup_steps=0", "muon_momentum_warmup_steps=1"]


def _train(d: Path, out: Path, *extra: str) -> int:
    from trainer.train import main

    return main(["--preset", "demo", "--train", str(d / "t_train_*.bin"), "--out", str(out), *TINY, *extra])


def test_demo_preset_trains_by_steps_and_records_its_tokenizer(train_dir, tmp_path) -> None:
    from evalkit.data.tokenizer import file_sha256

    a, b = tmp_path / "a.ptz", tmp_path / "b.ptz"
    assert _train(train_dir, a, "iterations=4", "warmdown_steps=2") == 0
    assert _train(train_dir, b, "iterations=4", "warmdown_steps=2") == 0
    meta = read_header(a)[0]["meta"]
    assert meta["stats"]["steps"] == 4
    assert meta[TOKENIZER_META] == file_sha256(SP1024) and meta["tokenizer"] == "tokenizer.model"
    # same steps, same seed, same thread count: the same model whatever the clock said
    assert read_header(a)[0]["payload_sha256"] == read_header(b)[0]["payload_sha256"]


def test_guard_aborts_loudly_instead_of_training_fewer_steps(train_dir, tmp_path, capsys) -> None:
    out = tmp_path / "a.ptz"
    assert _train(train_dir, out, "iterations=100000", "warmdown_steps=2", "max_seconds=1") == 2
    err = capsys.readouterr().err
    assert "guard after" in err and "of 100000 steps" in err and "raise max_seconds" in err
    assert not out.exists()


def test_abort_needs_a_steps_schedule(train_dir, tmp_path, capsys) -> None:
    assert _train(train_dir, tmp_path / "a.ptz", "schedule=time") == 2
    assert "on_max_seconds=abort needs schedule=steps" in capsys.readouterr().err


def test_abort_mode_schedule_ignores_the_clock() -> None:
    from trainer.config import load_preset
    from trainer.train import Progress

    t = load_preset("demo").train
    slow, fast = Progress(t, start=0.0), Progress(t, start=1e18)  # "elapsed" enormous vs negative
    assert [slow.scale(s) for s in (0, 3, 150, 250, 299)] == [fast.scale(s) for s in (0, 3, 150, 250, 299)]


# ---------------------------------------------------------------- tokenizer identity


@pytest.fixture
def scored(train_dir, tmp_path) -> Path:
    out = tmp_path / "m.ptz"
    assert _train(train_dir, out, "iterations=1", "warmdown_steps=1") == 0
    return out


def _score(artifact: Path, d: Path, tokenizer: Path, *extra: str) -> int:
    from evalkit.score import main

    return main([str(artifact), "--val", str(d / "t_val_*.bin"), "--tokenizer", str(tokenizer), "--limit-docs", "2",
                 "--strategy", "flat", "--no-progress", "--threads", "1", *extra])


def test_scoring_with_another_same_size_tokenizer_is_an_error(scored, train_dir, capsys) -> None:
    assert _score(scored, train_dir, SP1024) == 0
    capsys.readouterr()
    rc = _score(scored, train_dir, OTHER1024)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: --tokenizer")
    assert str(OTHER1024) in err and str(scored) in err and "--allow-tokenizer-mismatch" in err


def test_the_shards_record_alone_catches_it(train_dir, tmp_path, capsys) -> None:
    """An artifact without the field (exported before it existed): warned about, once; the
    shards' record still refuses the wrong tokenizer."""
    from evalkit.model.artifact import save_artifact
    from evalkit.model.quant import QuantSpec, quantize_state_dict
    from tests.conftest import random_model, tiny_config

    old = tmp_path / "old.ptz"
    save_artifact(old, tiny_config(), quantize_state_dict(random_model(tiny_config()).state_dict(), QuantSpec(8)))
    assert _score(old, train_dir, SP1024) == 0
    assert _score(old, train_dir, SP1024) == 0
    assert capsys.readouterr().err.count("records no tokenizer") == 1  # once per artifact per process
    assert _score(old, train_dir, OTHER1024) == 2
    err = capsys.readouterr().err
    assert "t_tokenizer.json" in err and "fineweb_1024_bpe_nofallback.model" in err


def test_allow_tokenizer_mismatch_warns_and_scores(scored, train_dir, capsys) -> None:
    assert _score(scored, train_dir, OTHER1024, "--allow-tokenizer-mismatch") == 0
    captured = capsys.readouterr()
    assert "warning: --tokenizer" in captured.err and "| flat |" in captured.out


def test_prepare_records_the_tokenizer_beside_the_shards(tmp_path, capsys) -> None:
    require_shared()
    from evalkit.data.prepare import main
    from evalkit.data.tokenizer import file_sha256, recorded_tokenizer

    docs = [json.loads(line)["text"] for line in (SHARED / "corpus" / "fineweb_docs_200.jsonl").open()][:20]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    assert main(["prepare", "--input", str(src), "--tokenizer", str(SP1024), "--out", str(tmp_path / "o"),
                 "--name", "web"]) == 0
    out = capsys.readouterr().out
    assert "NFKC" in out and "web_tokenizer.json" in out
    path, rec = recorded_tokenizer(str(tmp_path / "o" / "web_val_*.bin"))
    assert path.name == "web_tokenizer.json" and rec["tokenizer_sha256"] == file_sha256(SP1024)
    assert rec["vocab_size"] == 1024
    assert recorded_tokenizer(str(VAL1024)) is None  # the challenge's shards carry no record


# ---------------------------------------------------------------- lengths follow the artifact


def test_ttt_lengths_default_to_the_models_context() -> None:
    from evalkit.score import build_parser
    from evalkit.strategies.registry import build_strategy

    args = build_parser().parse_args(["a.ptz", "--val", "x", "--tokenizer", "t", "--seq-len", "96"])
    assert args.ttt_context is None and args.ttt_phase_seq is None
    s = build_strategy("ttt", args)
    assert s.config()["ttt_context"] == 96 and s.config()["ttt_phase_seq"] == 96
    args = build_parser().parse_args(["a.ptz", "--val", "x", "--tokenizer", "t", "--seq-len", "96",
                                      "--ttt-context", "64"])
    assert build_strategy("ttt", args).config()["ttt_context"] == 64


# ---------------------------------------------------------------- errors that say what to do


def test_error_lines_say_what_to_do(tmp_path) -> None:
    from evalkit.ablate.grid import load_grid
    from evalkit.data.prepare import read_documents
    from evalkit.model.artifact import load_artifact

    bad = tmp_path / "x.ptz"
    bad.write_bytes(b"0" * 64)
    with pytest.raises(EvalkitError, match=r"bad magic\); pass a .ptz written by python -m trainer.train"):
        load_artifact(bad)
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n\n")
    with pytest.raises(EvalkitError, match="no documents found; a .jsonl needs one"):
        read_documents(empty)
    with pytest.raises(EvalkitError, match="file not found; check the path, or copy examples/grid.toml"):
        load_grid(tmp_path / "nope.toml", {})


def test_ngram_errors_name_the_flag_once() -> None:
    from evalkit.engine.context import EvalData
    from evalkit.engine.loop import make_mixer
    from tests.conftest import random_model, tiny_config

    tokens = np.array([1, 5, 6, 7], np.uint16)
    data = EvalData(tokens, np.ones(4, np.int64), np.array([0]), source="x")
    with pytest.raises(EvalkitError) as e:
        make_mixer(random_model(tiny_config()), data, "mix:orders=2-99")
    assert str(e.value).count("--ngram") == 1, str(e.value)


def test_compile_is_announced_when_no_kernel_cache(tmp_path, monkeypatch, capsys) -> None:
    import evalkit.engine.loop as loop

    monkeypatch.setattr(loop, "_ANNOUNCED", False)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    loop.announce_compile()
    assert "compiling n-gram kernels (first run only" in capsys.readouterr().err
    loop.announce_compile()
    assert capsys.readouterr().err == ""  # once per process


def test_ablate_table_one_number_format_and_plot_titles() -> None:
    from evalkit.ablate.command import TABLE_COLUMNS
    from evalkit.ablate.plots import plot_subject

    fmt = dict((k, f) for k, _, f in TABLE_COLUMNS)["projected_8xh100_s"]
    assert [format(v, fmt) for v in (0.06385, 216.2)] == ["0.06", "216.20"]
    assert plot_subject("runs/demo/artifact.ptz", 75) == "artifact.ptz, 75 documents"
