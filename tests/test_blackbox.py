"""Black-box audit (`--score-fn`): verdicts on score functions written to fool it, and on a
submission-shaped entry (examples/submission): its hashed count-ratio cache fails
normalization with the sums in the message, its normalized tilt passes, and `--model`
scores its export to the val_bpb of its own eval loop."""
from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from evalkit.audit.command import main as audit_main
from evalkit.data.shards import doc_starts, load_stream
from evalkit.score import main as score_main
from tests.conftest import SP1024, VAL1024, require_shared

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "examples" / "submission"
FNS = "tests/blackbox_fns.py"
SMALL = ["--limit-docs", "4", "--doc-tokens", "160", "--perturb", "2", "--suffix", "1"]


def _audit(fn: str, *extra: str) -> list[str]:
    return ["--score-fn", fn, "--val", str(VAL1024), "--tokenizer", str(SP1024), *SMALL, *extra]


def _row(text: str, check: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {check} |"))


def test_legal_unigram_passes_every_check_batched(capsys, tmp_path) -> None:
    require_shared()
    out = tmp_path / "bb.json"
    assert audit_main(_audit(f"{FNS}:unigram", "--claims-doc-isolation", "--norm-positions", "2",
                             "--json", str(out))) == 0
    text = capsys.readouterr().out
    print(text)
    assert text.count("| PASS |") == 5 and "not checked: budgets" in text
    rec = json.loads(out.read_text())
    assert rec["vectorised"] is True
    sums = rec["normalization"]["sums"]
    assert len(sums) == 2 and all(abs(s - 1) < 1e-12 for s in sums.values())


@pytest.mark.parametrize("fn, extra, check, needle", [
    ("leaky", ["--claims-doc-isolation", "--norm-positions", "0"], "doc isolation", "(state crossed a BOS)"),
    ("peek", [], "causality", "moved"),
    ("gate", ["--norm-positions", "1"], "normalization", "sum over the 1,024 tokens of exp(-nll_t(a)) = 1.4"),
    ("noisy", ["--norm-positions", "0"], "determinism", "later checks are read to"),
    ("twice", ["--norm-positions", "0"], "coverage", "scored 2 times (expected 1)"),
    ("short", [], "coverage", "expected (639,): one NLL per target"),
])
def test_each_illegal_fn_fails_its_check(capsys, fn, extra, check, needle) -> None:
    require_shared()
    assert audit_main(_audit(f"{FNS}:{fn}", *extra)) == 1
    row = _row(capsys.readouterr().out, check)
    print(row)
    assert "| FAIL |" in row and needle in row


@pytest.mark.parametrize("spec, needle", [
    (f"{FNS}:nope", "defines no 'nope'; defined there:"),
    ("nope.py:f", "nope.py not found; check the path"),
])
def test_bad_score_fn_is_one_line(capsys, spec, needle) -> None:
    require_shared()
    assert audit_main(_audit(spec)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --score-fn") and needle in err and "Traceback" not in err


# -- the submission-shaped example ---------------------------------------------------------
def _entry():
    spec = importlib.util.spec_from_file_location("entry_under_test", ENTRY / "train_gpt_mini.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def entry_export(tmp_path_factory) -> Path:
    """The entry trained briefly on documents 100+ of the shared split (the audit reads
    documents 0-3), exported in its own int6 + lzma format."""
    require_shared()
    e = _entry()
    tokens = load_stream(str(VAL1024))
    h = e.Hyperparameters()
    h.model_dim, h.num_layers, h.num_heads, h.train_seq_len, h.iterations, h.batch_seqs = 32, 1, 2, 64, 15, 8
    model = e.train(h, tokens[doc_starts(tokens)[100]:])
    path = tmp_path_factory.mktemp("entry") / "final_model.int6.ptz"
    e.export(model, str(path))
    return path


def _entry_env(monkeypatch, path: Path, ngram: str) -> None:
    for k, v in {"ARTIFACT": str(path), "NGRAM": ngram, "EVAL_SEQ_LEN": "64", "EVAL_STRIDE": "32"}.items():
        monkeypatch.setenv(k, v)


def test_hashed_count_ratio_fails_normalization_with_sums(entry_export, monkeypatch, capsys) -> None:
    _entry_env(monkeypatch, entry_export, "hashed")
    assert audit_main(_audit(str(ENTRY / "evalkit_score_fn.py:score"), "--norm-positions", "2")) == 1
    text = capsys.readouterr().out
    row = _row(text, "normalization")
    print(row)
    total = float(re.search(r"sum over the 1,024 tokens of exp\(-nll_t\(a\)\) = ([0-9.e+]+)", row).group(1))
    assert "| FAIL |" in row and total > 1.5
    for check in ("coverage", "determinism", "causality"):
        assert "| PASS |" in _row(text, check)  # causal and deterministic: only the sum betrays it


def test_normalized_tilt_passes(entry_export, monkeypatch, capsys) -> None:
    _entry_env(monkeypatch, entry_export, "tilt")
    assert audit_main(_audit(str(ENTRY / "evalkit_score_fn.py:score"), "--norm-positions", "1")) == 0
    text = capsys.readouterr().out
    row = _row(text, "normalization")
    print(row)
    assert "| PASS |" in row and "max |sum - 1| = " in row


def test_model_scores_export_like_its_own_loop(entry_export, monkeypatch, tmp_path) -> None:
    """evalkit's sliding plan over the entry's own GPT = the entry's own sliding loop."""
    _entry_env(monkeypatch, entry_export, "none")
    out = tmp_path / "s.json"
    assert score_main([str(entry_export), "--model", str(ENTRY / "evalkit_model.py:load"), "--val", str(VAL1024),
                       "--tokenizer", str(SP1024), "--limit-docs", "6", "--strategy", "sliding", "--seq-len", "64",
                       "--stride", "32", "--threads", "1", "--no-progress", "--json", str(out)]) == 0
    ours = json.loads(out.read_text())["results"][0]
    e = _entry()
    tokens = load_stream(str(VAL1024), limit_docs=6)
    nll = e.eval_nll(e.load_export(str(entry_export)), tokens, e.Hyperparameters())
    nbytes = e.target_bytes(tokens, e.byte_luts(str(SP1024), 1024)).sum()
    theirs = nll.sum() / math.log(2) / nbytes
    print(f"val_bpb evalkit --model {ours['val_bpb']:.10f}, entry's own loop {theirs:.10f}, "
          f"diff {abs(ours['val_bpb'] - theirs):.2e}")
    assert ours["bytes"] == nbytes and ours["tokens"] == tokens.size - 1
    assert abs(ours["val_bpb"] - theirs) < 1e-6
    assert np.isfinite(theirs)
