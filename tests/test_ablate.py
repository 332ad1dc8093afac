"""`python -m evalkit.ablate`: grids, outputs, resume and stale caches, the cost projection."""
import json
import math

import numpy as np
import pytest

from evalkit.ablate import command as ablate
from evalkit.model.artifact import save_artifact
from evalkit.engine.cost import FULL_SPLIT_TOKENS, model_passes, projected_8xh100_seconds
from evalkit.errors import EvalkitError
from evalkit.ablate.grid import load_grid, per_run_actions
from evalkit.model.gpt import estimate_forward_flops
from evalkit.model.quant import QuantSpec, quantize_state_dict
from tests.conftest import SP1024, VAL1024, random_model, require_shared, tiny_config

FAST = ["--limit-docs", "3", "--no-progress", "--seq-len", "32", "--stride", "32", "--batch-windows", "8", "--bootstrap", "199"]


def cli(tmp_path, artifact, out, *extra, capsys=None):
    rc = ablate.main([str(artifact), "--val", str(VAL1024), "--tokenizer", str(SP1024), "--out", str(out),
                      *FAST, *extra])
    text = capsys.readouterr() if capsys else None
    return rc, text


def write_grid(tmp_path, body: str):
    path = tmp_path / "grid.toml"
    path.write_text(body)
    return path


def actions():
    return per_run_actions(ablate.build_parser(), ablate.ABLATE_DESTS)


def test_grid_reads_runs_and_checks_keys_and_types(tmp_path):
    runs, baseline = load_grid(write_grid(tmp_path, 'baseline = "f"\n[[run]]\nname = "f"\nstrategy = "flat"\n'
                                          '[[run]]\nname = "s"\nstrategy = "sliding"\nseq-len = 16\n'
                                          'doc_isolated = true\nngram = "mix:orders=2-3"\n'), actions())
    assert baseline == "f" and [r.name for r in runs] == ["f", "s"]
    assert runs[1].overrides == {"seq_len": 16, "doc_isolated": True} and runs[1].ngram == "mix:orders=2-3"
    bad = {'[[run]]\nname = "a"\nstrid = 3\n': "unknown key 'strid'",
           '[[run]]\nname = "a"\nstride = "64"\n': "takes a int",
           '[[run]]\nname = "a"\ndoc_isolated = 1\n': "is a switch",
           '[[run]]\nname = "a"\n[[run]]\nname = "a"\n': "appears twice",
           '[[run]]\nstrategy = "flat"\n': "needs name",
           'runs = 1\n': "unknown top-level key 'runs'",
           '[[run]\n': "not valid TOML",
           '[[run]]\nname = "a"\nlimit_docs = 3\n': "unknown key 'limit_docs'"}
    for body, msg in bad.items():
        with pytest.raises(EvalkitError, match=msg) as e:
            load_grid(write_grid(tmp_path, body), actions())
        assert "grid.toml" in str(e.value)


def test_cli_writes_table_json_csv_and_plots(tmp_path, tiny_artifact, capsys):
    require_shared()
    out = tmp_path / "out"
    rc, _ = cli(tmp_path, tiny_artifact, out, "--strategy", "flat", "--strategy", "sliding", "--stride", "16",
                "--ngram", "tilt:orders=2-3", "--baseline", "flat", capsys=capsys)
    assert rc == 0
    rec = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in rec["results"]}
    assert list(rows) == ["flat", "flat+tilt:orders=2-3", "sliding", "sliding+tilt:orders=2-3"]
    base = rows["flat"]
    assert base["delta_bpb"] == 0 and base["p_value"] == 1.0
    for r in rows.values():
        assert r["delta_bpb"] == pytest.approx(r["val_bpb"] - base["val_bpb"], abs=1e-12)
        assert r["delta_ci_low"] <= r["delta_bpb"] <= r["delta_ci_high"]
        assert r["bytes"] == base["bytes"] and r["docs"] == 3 and r["projected_8xh100_s"] > 0
        assert math.isclose(sum(rec["per_doc"][r["name"]]["per_doc_nll"]), r["val_loss"] * r["tokens"],
                            rel_tol=1e-9)
    assert rows["sliding"]["val_bpb"] != base["val_bpb"]  # more context: a different number
    assert rec["artifact_sha256"] and rec["data_sha256"] and rec["bootstrap"] == 199
    table = (out / "table.md").read_text()
    assert "| sliding+tilt:orders=2-3 |" in table and "utilization 0.35" in table
    assert (out / "results.csv").read_text().startswith("name,label,val_bpb")
    for png in ("bpb_by_strategy.png", "bpb_vs_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_finished_runs_and_refuses_stale_entries(tmp_path, tiny_artifact, capsys, caplog):
    require_shared()
    out, runs = tmp_path / "out", ["--strategy", "flat", "--ngram", "tilt:orders=2-3"]
    assert cli(tmp_path, tiny_artifact, out, *runs, capsys=capsys)[0] == 0
    first = json.loads((out / "results.json").read_text())["results"]
    rc, text = cli(tmp_path, tiny_artifact, out, *runs, "--resume", capsys=capsys)
    assert rc == 0 and "flat: cached" in text.out and "flat+tilt:orders=2-3: cached" in text.out
    again = json.loads((out / "results.json").read_text())["results"]
    assert [r["val_bpb"] for r in again] == [r["val_bpb"] for r in first] and all(r["cached"] for r in again)
    # A cache entry whose stored artifact hash was changed (copied, edited) is refused.
    entry = next(p for p in (out / "cache").glob("*.json") if json.loads(p.read_text())["run_config"]["ngram"])
    doctored = json.loads(entry.read_text())
    doctored["artifact_sha256"] = "0" * 64
    entry.write_text(json.dumps(doctored))
    rc, text = cli(tmp_path, tiny_artifact, out, *runs, "--resume", capsys=capsys)
    assert rc == 0 and "flat: cached" in text.out and "flat+tilt:orders=2-3: cached" not in text.out
    assert "refusing stale cache entry" in caplog.text and "its artifact_sha256 differs" in caplog.text
    # A changed artifact at the same path never reuses the old results.
    save_artifact(tiny_artifact, tiny_config(), quantize_state_dict(random_model(tiny_config(), 5).state_dict(),
                                                                    QuantSpec(8)))
    rc, text = cli(tmp_path, tiny_artifact, out, *runs, "--resume", capsys=capsys)
    assert rc == 0 and "cached" not in text.out
    changed = json.loads((out / "results.json").read_text())["results"]
    assert changed[0]["val_bpb"] != first[0]["val_bpb"] and not any(r["cached"] for r in changed)


@pytest.mark.parametrize("extra,msg", [
    ([], "either --grid"),
    (["--strategy", "flat"], "at least two"),
    (["--strategy", "flat", "--strategy", "slidin"], "strategy 'slidin' unknown"),
    (["--strategy", "flat", "--strategy", "sliding", "--baseline", "ttt"], "--baseline ttt: no such run"),
])
def test_bad_command_lines_exit_2_with_one_line(tmp_path, tiny_artifact, capsys, extra, msg):
    rc, text = cli(tmp_path, tiny_artifact, tmp_path / "o", *extra, capsys=capsys)
    assert rc == 2 and text.err.startswith("error: ") and msg in text.err and "Traceback" not in text.err


def test_projection_formula():
    cfg = tiny_config()
    flat = {"name": "flat", "seq_len": 64, "stride": 64}
    sliding = {"name": "sliding", "seq_len": 64, "stride": 16}
    assert model_passes(flat) == (1.0, 0.0) and model_passes(sliding) == (4.0, 0.0)
    # ttt, chunk 4, context 8: a 10-target document has windows 4, 8, 8 (trained: 4, 8).
    ttt = {"name": "ttt", "ttt_chunk": 4, "ttt_context": 8, "ttt_steps": 1}
    assert model_passes(ttt, np.array([10, 3])) == pytest.approx((23 / 13, 2 * 12 / 13))
    assert model_passes({**ttt, "ttt_steps": 3}, np.array([10]))[1] == pytest.approx(8 * 12 / 10)
    one = estimate_forward_flops(cfg, FULL_SPLIT_TOKENS, 32) / (8 * 989e12 * 0.35)
    assert projected_8xh100_seconds(cfg, flat, 1000) == pytest.approx(one)
    assert projected_8xh100_seconds(cfg, sliding, 1000) == pytest.approx(4 * one)
    # 2 s of mixer time over 1,000 tokens -> 2 * 62.02e6 / 1000 s on the full split: the node's
    # one n-gram pass covers the whole split on one thread, not divided over the 8 ranks
    assert projected_8xh100_seconds(cfg, flat, 1000, 2.0) == pytest.approx(one + 2 * FULL_SPLIT_TOKENS / 1000)
    assert projected_8xh100_seconds(cfg, flat, 1000, utilization=0.7) == pytest.approx(one / 2)


def test_resume_key_is_the_code_that_ran(tmp_path, monkeypatch):
    from evalkit.ablate import runcache

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "m.py").write_text("x = 1\n")
    before = runcache.tree_sha256({"pkg": pkg})
    (pkg / "sub" / "m.py").write_text("x = 2\n")
    assert runcache.tree_sha256({"pkg": pkg}) != before
    ident = runcache.RunIdentity("a", "d", "b", {"strategy": "flat"})
    key = ident.key()
    monkeypatch.setattr(runcache, "code_sha256", lambda: "f" * 64)
    assert ident.key() != key and ident.fields()["code_sha256"] == "f" * 64
