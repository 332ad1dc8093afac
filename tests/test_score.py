"""`python -m evalkit.score` end to end on the shared FineWeb shard, and its bad input."""
import json
import math

import numpy as np
import torch

from evalkit.data.shards import ByteTable, load_stream, write_shard
from evalkit.score import main
from tests.conftest import SP1024, SP8192, VAL1024, require_shared

LIMIT = ["--limit-docs", "3", "--no-progress", "--batch-windows", "4"]


def score(tmp_path, artifact, *extra, val=None):
    out = tmp_path / "r.json"
    rc = main([str(artifact), "--val", str(val or VAL1024), "--tokenizer", str(SP1024), "--json", str(out),
               *LIMIT, *extra])
    assert rc == 0
    return json.loads(out.read_text())


def reference_nll(artifact, tokens):
    """Slow path: one full-context forward over the whole (short) stream."""
    from evalkit.engine.inputs import load_model
    model = load_model(str(artifact), torch.device("cpu")).model
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.from_numpy(tokens[:-1].astype(np.int64))[None]).float(), -1)[0]
    return -logp.gather(1, torch.from_numpy(tokens[1:].astype(np.int64))[:, None])[:, 0].double().numpy()


def test_flat_and_sliding_are_exact(tmp_path, tiny_artifact):
    require_shared()
    rec = score(tmp_path, tiny_artifact, "--strategy", "flat", "--strategy", "sliding", "--seq-len", "64",
                "--stride", "16")
    flat, sliding = rec["results"]
    tokens = load_stream(str(VAL1024), limit_docs=3)
    nbytes = int(ByteTable.from_sentencepiece(SP1024).target_bytes(tokens).sum())
    for r in (flat, sliding):
        assert r["tokens"] == tokens.size - 1 and r["bytes"] == nbytes
        assert r["coverage"]["scored_once"] == tokens.size - 1
        assert math.isclose(r["val_bpb"], r["val_loss"] * r["tokens"] / math.log(2) / r["bytes"], rel_tol=1e-12)
    # With seq_len >= the stream, sliding and one full forward agree to float32 rounding.
    whole = score(tmp_path, tiny_artifact, "--strategy", "sliding", "--seq-len", str(tokens.size))["results"][0]
    ref = reference_nll(tiny_artifact, tokens)
    assert abs(whole["val_loss"] - ref.mean()) < 1e-5
    assert rec["artifact_sha256"] and rec["data_sha256"] and rec["versions"]["torch"] and rec["git"]
    assert rec["model_config"]["vocab_size"] == 1024 and rec["seed"] == 1337


def test_drop_tail_matches_baseline_token_count(tmp_path, tiny_artifact):
    require_shared()
    r = score(tmp_path, tiny_artifact, "--strategy", "flat", "--seq-len", "64", "--drop-tail")["results"][0]
    n = load_stream(str(VAL1024), limit_docs=3).size
    assert r["tokens"] == ((n - 1) // 64) * 64 and r["coverage"]["unscored"] == (n - 1) % 64


def expect_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny_artifact, capsys):
    require_shared()
    base = ["--tokenizer", str(SP1024), "--no-progress"]
    expect_error(capsys, [str(tiny_artifact), "--val", str(tmp_path / "none_*.bin"), *base], "none_*.bin")
    empty = tmp_path / "empty_val.bin"
    empty.write_bytes(b"")
    expect_error(capsys, [str(tiny_artifact), "--val", str(empty), *base], "empty_val.bin")
    bad = tmp_path / "bad_val.bin"
    bad.write_bytes(b"\0" * 2048)
    expect_error(capsys, [str(tiny_artifact), "--val", str(bad), *base], "bad_val.bin")
    big = tmp_path / "big_val.bin"
    write_shard(big, np.array([1, 5, 2000, 7], dtype=np.uint16))
    expect_error(capsys, [str(tiny_artifact), "--val", str(big), *base], "2000")
    expect_error(capsys, [str(tiny_artifact), "--val", str(VAL1024), "--tokenizer", str(SP8192)], "vocab 8192")
    expect_error(capsys, [str(tmp_path / "nope.ptz"), "--val", str(VAL1024), *base], "nope.ptz")
    expect_error(capsys, [str(tiny_artifact), "--val", str(VAL1024), *base, "--stride", "999"], "--stride")
    expect_error(capsys, [str(tiny_artifact), "--val", str(VAL1024), *base, "--strategy", "magic"], "magic")
    trunc = tmp_path / "trunc.ptz"
    trunc.write_bytes(tiny_artifact.read_bytes()[:-50])
    expect_error(capsys, [str(trunc), "--val", str(VAL1024), *base], "trunc.ptz")
