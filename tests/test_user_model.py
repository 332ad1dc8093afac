"""--model FILE.py:NAME (a module that is not evalkit's GPT) under every strategy, its
contract checks, and --plugin on score and ablate."""
from __future__ import annotations

import json

import pytest
import torch

from evalkit.ablate.command import main as ablate_main
from evalkit.audit.command import main as audit_main
from evalkit.score import main as score_main
from tests.conftest import SP1024, VAL1024, require_shared
from tests.user_models import _seeded

MODELS = "tests/user_models.py"
FLAGS = ["--val", str(VAL1024), "--tokenizer", str(SP1024), "--limit-docs", "3", "--threads", "1", "--no-progress"]


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "user.pt"
    torch.save(_seeded().state_dict(), path)
    return path


def test_every_strategy_runs_on_a_user_module(weights, tmp_path, capsys) -> None:
    require_shared()
    rows = []
    for i, extra in enumerate([["--strategy", "flat", "--strategy", "sliding", "--stride", "32", "--doc-isolated",
                                "--ngram", "mix:orders=2-3"],
                               ["--strategy", "ttt", "--ttt-targets", "attn.c_q,lm_head", "--ttt-chunk", "32",
                                "--ttt-context", "64", "--ttt-phases", "1"]]):
        out = tmp_path / f"s{i}.json"
        assert score_main([str(weights), "--model", f"{MODELS}:causal", *FLAGS, *extra, "--json", str(out)]) == 0
        rows += json.loads(out.read_text())["results"]
    bpb = {r["strategy"]: r["val_bpb"] for r in rows}
    print({k: round(v, 4) for k, v in bpb.items()})
    assert list(bpb) == ["flat(doc)", "flat(doc)+mix", "sliding(doc)", "sliding(doc)+mix", "ttt+phases"]
    assert all(r["coverage"]["scored_once"] == r["coverage"]["targets"] for r in rows)
    assert bpb["ttt+phases"] != bpb["flat(doc)"]  # the adapters and the phase changed something


def test_default_ttt_targets_name_the_modules_found(weights, capsys) -> None:
    require_shared()
    assert score_main([str(weights), "--model", f"{MODELS}:causal", *FLAGS, "--strategy", "ttt",
                       "--ttt-targets", "q,k"]) == 2
    err = capsys.readouterr().err
    assert "'k' matches no Linear module of the model; its Linear modules: attn.c_q, attn.c_v, lm_head" in err


def test_audit_passes_a_user_module(weights, capsys) -> None:
    require_shared()
    assert audit_main([str(weights), "--model", f"{MODELS}:causal", *FLAGS, "--doc-tokens", "128",
                       "--positions", "8", "--audit-docs", "4", "--strategy", "sliding", "--stride", "32"]) == 0
    out = capsys.readouterr().out
    assert "| PASS |" in out and "| FAIL |" not in out


@pytest.mark.parametrize("name, needle", [
    ("peeking", "forward must be causal"),
    ("flat_logits", "expected (1, 2, V) logits"),
    ("no_seq_len", "pass --seq-len"),
    ("raises", "raised FileNotFoundError: no export at"),
    ("nope", "defines no 'nope'"),
])
def test_contract_violations_are_one_line(weights, capsys, name, needle) -> None:
    require_shared()
    assert score_main([str(weights), "--model", f"{MODELS}:{name}", *FLAGS, "--strategy", "flat"]) == 2
    err = capsys.readouterr().err
    err = err.strip().splitlines()[-1]  # after the one-line thread choice
    assert err.startswith("error: --model") and needle in err and "Traceback" not in err


PLUGIN = "examples/plugins/hidden_temperature.py:HiddenTemperature"


def test_plugin_on_score_and_ablate_and_audit(tiny_artifact, tmp_path, capsys) -> None:
    """A plugin that reads the hidden state (no hooks) is one more row, one more run, and legal."""
    require_shared()
    small = [*FLAGS, "--seq-len", "64", "--stride", "32"]
    assert score_main([str(tiny_artifact), *small, "--strategy", "sliding", "--plugin", PLUGIN]) == 0
    table = capsys.readouterr().out
    assert "| sliding |" in table and "| hidden-temperature |" in table
    out = tmp_path / "abl"
    assert ablate_main([str(tiny_artifact), *small, "--strategy", "sliding", "--plugin", PLUGIN, "--out", str(out),
                        "--bootstrap", "99"]) == 0
    assert f"| {PLUGIN} |" in (out / "table.md").read_text()
    assert audit_main([str(tiny_artifact), *small, "--doc-tokens", "128", "--positions", "8", "--audit-docs", "4",
                       "--plugin", PLUGIN]) == 0
