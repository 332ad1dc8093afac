"""`python -m evalkit.audit`: exit codes 0 / 1 / 2 and one-line errors for bad plugins."""
from __future__ import annotations

import json

import pytest

from evalkit.audit.command import main
from tests.conftest import SP1024, VAL1024, require_shared

SMALL = ["--limit-docs", "6", "--audit-docs", "3", "--doc-tokens", "160", "--positions", "24", "--time-budget", "0",
         "--seq-len", "64", "--stride", "32", "--threads", "1", "--no-progress"]


def _args(art, *extra: str) -> list[str]:
    return [str(art), "--val", str(VAL1024), "--tokenizer", str(SP1024), *SMALL, *extra]


def test_cli_passes_sliding_and_writes_json(tiny_artifact, tmp_path, capsys) -> None:
    require_shared()
    out = tmp_path / "a.json"
    assert main(_args(tiny_artifact, "--strategy", "sliding", "--doc-isolated", "--json", str(out))) == 0
    text = capsys.readouterr().out
    assert "| FAIL |" not in text and "= decoded UTF-8" in text
    assert "| doc isolation | C10 | PASS |" in text and "| suffix | C4,C1 | PASS |" in text
    report = json.loads(out.read_text())
    ti = next(c for c in report["checks"] if c["name"] == "target independence")
    assert ti["trials"] and all("outcome" in t for t in ti["trials"])  # every perturbation and its outcome


def test_cli_plugin_fails_with_exit_1(tiny_artifact, capsys) -> None:
    require_shared()
    assert main(_args(tiny_artifact, "--plugin", "evalkit/audit/gallery/hashed_ratio.py:HashedRatio")) == 1
    text = capsys.readouterr().out
    assert "| normalization | C2 | FAIL |" in text and "worst sum p" in text


@pytest.mark.parametrize("extra, needle", [
    (["--plugin", "nope.py:X"], "--plugin nope.py:X: nope.py not found"),
    (["--plugin", "README.md:X"], "--plugin README.md:X: README.md is not a Python file"),
    (["--plugin", "evalkit/audit/gallery/hashed_ratio.py"], "expected FILE.py:NAME"),
    (["--plugin", "evalkit/audit/gallery/hashed_ratio.py:Nope"], "defines no 'Nope'; strategies there: HashedRatio"),
    (["--ngram", "mix:orders=2-3", "--ngram", "tilt:orders=2-3"], "audit one combination at a time"),
    (["--strategy", "nope"], "--strategy nope: unknown"),
])
def test_cli_bad_input_exit_2(tiny_artifact, capsys, extra, needle) -> None:
    require_shared()
    assert main(_args(tiny_artifact, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_failed_base_run_says_so_and_skips_the_rest(tmp_path, tiny_artifact, capsys) -> None:
    require_shared()
    bad = tmp_path / "crash.py"
    bad.write_text("from evalkit.strategies.sliding import Sliding\n\n\nclass Crash(Sliding):\n"
                   "    def run(self, ctx):\n        raise RuntimeError('boom')\n")
    assert main(_args(tiny_artifact, "--plugin", f"{bad}:Crash")) == 1
    text = capsys.readouterr().out
    assert "the base run failed: the strategy raised RuntimeError: boom" in text
    assert "needs 2 or more documents" not in text and "skipped" in text


def test_plugin_import_error_is_one_line(tmp_path, tiny_artifact, capsys) -> None:
    require_shared()
    bad = tmp_path / "bad.py"
    bad.write_text("import not_a_module_anywhere\n")
    assert main(_args(tiny_artifact, "--plugin", f"{bad}:S")) == 2
    assert "ModuleNotFoundError" in capsys.readouterr().err


def test_self_test_on_an_artifact_and_real_text(tiny_artifact) -> None:
    """--self-test with ARTIFACT --val --tokenizer: the gallery's cheats on that model and a
    prefix of that split (FineWeb here), with the tokenizer's byte table for replacements."""
    require_shared()
    from evalkit.audit.command import build_parser
    from evalkit.audit.selftest import _row, artifact_bench, run_matrix

    bench = artifact_bench(build_parser().parse_args(_args(tiny_artifact)))
    assert "tiny.ptz" in bench.label and bench.table is not None
    assert bench.make_stream(1).source == bench.make_stream(2).source != "synthetic"
    picked = {"sliding+mix", "TrainThenScore", "TargetKeyedBackoff"}
    got = {label: _row(label, checks, entry.check if entry else None)
           for label, entry, checks in run_matrix(picked, bench)}
    assert set(got) == picked
    assert all(ok for _, ok in got.values()), got


@pytest.mark.parametrize("extra", [["--strategy", "ttt"], ["--ngram", "mix:orders=2-3"]])
def test_self_test_refuses_a_strategy_flag(tiny_artifact, capsys, extra) -> None:
    require_shared()
    assert main(_args(tiny_artifact, "--self-test", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --self-test with " + extra[0]) and "Traceback" not in err
