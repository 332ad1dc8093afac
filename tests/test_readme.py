"""README cannot drift from the code: every command it shows is run.

Every `python -m MODULE ...` (also under `torchrun`) and `python benchmarks/X.py ...` that
README.md shows, in a fenced block or an inline code span, is collected automatically, so
commands added later are covered without editing this file:
- each runs with `--help` (exit 0), and every `--flag` README writes for it must appear
  in that help text;
- the ones that need no GPU, network or challenge data run for real at tiny sizes
  (README's own `data prepare` line builds the data, its `trainer.train --preset demo` line
  trains the model the others score), with README's paths replaced by those files.
Plus the facts README states about the demo: its shard names, and that examples/grid.toml
has the rows of README's ablation table.
"""
from __future__ import annotations

import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENV_THREADS = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _logical_lines(block: str) -> list[str]:
    return [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]


def readme_commands(text: str = README) -> list[str]:
    """Command lines of fenced blocks and inline spans that run python or torchrun."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    inline = re.findall(r"(?<!`)`([^`]+?)`(?!`)", prose)  # may wrap onto the next line
    lines = [ln for b in fenced for ln in _logical_lines(b)] + [" ".join(s.split()) for s in inline if "\n\n" not in s]
    out = []
    for ln in lines:
        ln = " ".join(re.sub(r"\s+#.*$", "", ln).split())  # no trailing shell comment, single spaces
        if re.match(r"^(python|torchrun)\b", ln) and (" -m " in ln or "benchmarks/" in ln) and ln not in out:
            out.append(ln)
    return out


def parse(cmd: str) -> tuple[list[str], list[str]]:
    """(target: ['-m', module] or [script], the arguments README gives it); optional
    [bracketed] parts of README's synopses are dropped."""
    words = shlex.split(re.sub(r"\[[^\]]*\]", " ", cmd))
    if words[0] == "torchrun":
        i = words.index("-m")
        return words[i:i + 2], words[i + 2:]
    if words[1] == "-m":
        return words[1:3], words[3:]
    return [words[1]], words[2:]


def subcommand(target: list[str], args: list[str]) -> list[str]:
    """`data prepare`, `artifact info`: the first word when the module has subcommands."""
    if target[-1] in ("evalkit.data", "evalkit.artifact") and args and not args[0].startswith("-"):
        return [args[0]]
    return []


COMMANDS = readme_commands()


def _run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **ENV_THREADS, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_shows_the_commands_we_expect() -> None:
    modules = {parse(c)[0][-1] for c in COMMANDS}
    for m in ("evalkit.score", "evalkit.ablate", "evalkit.audit", "evalkit.data", "evalkit.artifact",
              "trainer.train", "trainer.unigram"):
        assert m in modules, f"README shows no `python -m {m}` command (parsed: {sorted(modules)})"


def help_cases() -> dict[tuple[str, ...], dict]:
    """target (+ subcommand) -> the README commands that call it and every flag they use."""
    out: dict[tuple[str, ...], dict] = {}
    for c in COMMANDS:
        target, args = parse(c)
        case = out.setdefault(tuple(target + subcommand(target, args)), {"cmds": [], "flags": set()})
        case["cmds"].append(c)
        case["flags"] |= {w.split("=")[0] for w in args if w.startswith("--")}
    return out


HELP_CASES = help_cases()


def help_text(target: tuple[str, ...]) -> str:
    """`python -m MODULE [SUB] --help`, run in this process (torch is imported once, not per command)."""
    import contextlib
    import io
    import runpy

    buf, argv = io.StringIO(), sys.argv
    sys.argv = [target[1], *target[2:], "--help"]
    try:
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exc:
            runpy.run_module(target[1], run_name="__main__", alter_sys=False)
    finally:
        sys.argv = argv
    assert exc.value.code in (0, None), f"{' '.join(target)} --help exited {exc.value.code}"
    return buf.getvalue()


@pytest.mark.parametrize("target", sorted(HELP_CASES), ids=[" ".join(t) for t in sorted(HELP_CASES)])
def test_every_readme_command_has_help_and_its_flags(target) -> None:
    flags, cmds = HELP_CASES[target]["flags"], HELP_CASES[target]["cmds"]
    if target[0] != "-m":  # a benchmark script: some run on any argument, so read its source instead
        source = (ROOT / target[0]).read_text()
        missing = sorted(f for f in flags if f'"{f}"' not in source)
        assert not missing, f"README's `{cmds}` use {missing}, which {target[0]} does not define"
        return
    text = help_text(target)
    missing = sorted(f for f in flags if f not in text)
    assert not missing, f"README's {cmds} use {missing}, which `{' '.join(target)} --help` does not list"


# ---------------------------------------------------------------- real runs at tiny sizes


def _tiny_corpus(path: Path) -> Path:
    """~150 short documents of a made-up language: enough text for a 1024-piece BPE."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(1500)]
    with open(path, "w") as f:
        for _ in range(150):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(60, 160)))
            f.write(json.dumps({"text": text.capitalize() + "."}) + "\n")
    return path


# README flags whose values are this workspace's files; MODULE-specific tails keep runs tiny.
TINY_TAIL = {
    "evalkit.score": ["--limit-docs", "3", "--no-progress"],
    "evalkit.ablate": ["--limit-docs", "3", "--no-progress", "--bootstrap", "99"],
    "evalkit.audit": ["--audit-docs", "2", "--doc-tokens", "96", "--positions", "16", "--no-progress"],
    "trainer.train": ["--quiet", "iterations=3", "num_layers=1", "model_dim=32", "num_heads=2", "num_kv_heads=1",
                      "train_seq_len=64", "batch_tokens=256", "warmup_steps=0", "warmdown_steps=1",
                      "muon_momentum_warmup_steps=1"],
}
# What runs for real: everything else needs a GPU, the network, the challenge's data or
# minutes (the self-test, torchrun, --scale presets), and is covered by --help above.
REAL = ("evalkit.data", "evalkit.score", "evalkit.ablate", "evalkit.audit", "evalkit.artifact", "trainer.train",
        "trainer.unigram")


def real_cases() -> list[str]:
    out = []
    for c in COMMANDS:
        target, args = parse(c)
        if target[0] != "-m" or target[1] not in REAL or c.startswith("torchrun") or "--self-test" in args:
            continue
        if len(args) < 2:
            continue  # a bare synopsis in the prose (`python -m evalkit.score artifact.ptz`)
        if target[1] == "trainer.train" and "--preset" in args and args[args.index("--preset") + 1] != "demo":
            continue  # the recipes' presets take minutes even at --scale tiny (tests/test_trainer.py)
        if any(f in args for f in ("--baseline-config", "--plugin", "--byte-sidecar", "--model", "--score-fn")):
            continue  # need a baseline export / a plugin or model file / a sidecar: tested in their own files
        if "..." in args:
            continue  # a synopsis with elided flags: --help above checks the flags it names
        out.append(c)
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    """README's own prepare and demo-train commands, run on a tiny corpus."""
    d = tmp_path_factory.mktemp("readme")
    w = {"dir": d, "input": _tiny_corpus(d / "docs.jsonl"), "data": d / "data"}
    prepare = next(c for c in COMMANDS if c.startswith("python -m evalkit.data prepare") and "--train-tokenizer" in c)
    _check(run_substituted(prepare, w))
    w["tokenizer"] = w["data"] / "tokenizer.model"
    w["train"] = str(w["data"] / "data_train_*.bin")
    w["val"] = str(w["data"] / "data_val_*.bin")
    train = next(c for c in COMMANDS if c.startswith("python -m trainer.train --preset demo"))
    w["artifact"] = d / "model.ptz"
    _check(run_substituted(train, w))
    return w


POSITIONAL = {"evalkit.score": "artifact", "evalkit.ablate": "artifact", "evalkit.audit": "artifact",
              "evalkit.artifact": "artifact", "evalkit.data": "val"}


def substitute(cmd: str, w: dict) -> list[str]:
    """README's paths -> the workspace's files, by the flag (or position) they are given to."""
    target, args = parse(cmd)
    sub = subcommand(target, args)
    args = args[len(sub):]
    by_flag = {"--val": w.get("val"), "--tokenizer": w.get("tokenizer"), "--train": w.get("train"),
               "--input": w["input"], "--json": w["dir"] / "out.json"}
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a in by_flag and i + 1 < len(args):
            out += [a, str(by_flag[a])]
            i += 2
            continue
        if a == "--out" and i + 1 < len(args):
            is_file = args[i + 1].endswith(".ptz")
            target_path = w["artifact"] if is_file else (w["data"] if target[1] == "evalkit.data" else w["dir"] / "o")
            out += [a, str(target_path)]
            i += 2
            continue
        if not a.startswith("-") and "=" not in a and not out and target[1] in POSITIONAL:
            out.append(str(w[POSITIONAL[target[1]]]))  # ARTIFACT of score/ablate/audit/artifact; data info's GLOB
        else:
            out.append(a)
        i += 1
    if target[1] == "evalkit.ablate" and "--out" not in out:  # never the default ./ablate_out in the checkout
        out += ["--out", str(w["dir"] / "o")]
    return [*target, *sub, *out, *TINY_TAIL.get(target[1], [])]


def run_substituted(cmd: str, w: dict) -> tuple[str, list[str], subprocess.CompletedProcess]:
    argv = substitute(cmd, w)
    return cmd, argv, _run(argv)


def _check(res) -> subprocess.CompletedProcess:
    cmd, argv, r = res
    assert r.returncode == 0, f"README's `{cmd}`\nran as: {shlex.join(argv)}\nexit {r.returncode}:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


REAL_CASES = real_cases()


@pytest.mark.parametrize("cmd", REAL_CASES, ids=[c[:60] for c in REAL_CASES])
def test_readme_command_runs_for_real(ws, cmd) -> None:
    r = _check(run_substituted(cmd, ws))
    target = parse(cmd)[0][-1]
    if target in ("evalkit.score", "evalkit.ablate"):
        assert "| strategy |" in r.stdout
    if target == "evalkit.artifact":
        assert "tokenizer: tokenizer.model sha256" in r.stdout  # the trainer recorded it (data prepare's record)


def test_real_runs_cover_the_key_commands() -> None:
    covered = {parse(c)[0][-1] for c in REAL_CASES}
    assert {"evalkit.score", "evalkit.ablate", "evalkit.audit", "evalkit.artifact", "trainer.train"} <= covered


# ---------------------------------------------------------------- facts README states


def test_readme_demo_paths_are_the_demos() -> None:
    from evalkit.data.corpus import DEMO_NAME

    names = set(re.findall(r"runs/demo/data/([A-Za-z0-9]+)_(?:val|train)_", README))
    assert names == {DEMO_NAME}, f"README names demo shards {names}; the demo writes {DEMO_NAME}_*"


def test_grid_reproduces_readme_ablation_table() -> None:
    import tomllib

    section = README.split("## What the demo prints", 1)[1].split("\n## ", 1)[0]
    table = section.split("| strategy | bpb |", 1)[1]
    rows = re.findall(r"^\| ([^|\s]+) \|", table, flags=re.M)
    grid = tomllib.loads((ROOT / "examples" / "grid.toml").read_text())
    names = [r["name"] for r in grid["run"]]
    assert names[0] == grid["baseline"] == "flat"
    assert rows == names[1:], f"README's ablation rows {rows} != examples/grid.toml runs {names[1:]}"


def test_make_targets_and_ci() -> None:
    make = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", make, flags=re.M), f"Makefile lacks `{target}`"
        assert f"make {target}" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "-rs" in (ROOT / "pytest.ini").read_text()  # README promises skip reasons


def test_counted_code_is_closed_under_imports_and_listed_in_readme() -> None:
    """The code a scorer needs to rebuild the model: every evalkit module the counted files
    import (package __init__ files aside) is counted, and README lists exactly these."""
    import ast

    from evalkit.model.artifact import COUNTED_CODE

    needed, todo = set(), ["evalkit/model/gpt.py", "evalkit/model/artifact.py"]
    while todo:
        f = todo.pop()
        if f in needed:
            continue
        needed.add(f)
        for node in ast.walk(ast.parse((ROOT / f).read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for n in names:
                path = n.replace(".", "/") + ".py"
                if n.startswith("evalkit") and (ROOT / path).is_file():
                    todo.append(path)
    assert needed == set(COUNTED_CODE), f"counted {sorted(COUNTED_CODE)}, the imports need {sorted(needed)}"
    listed = README.split("Counted code is", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`(evalkit/[\w/]+\.py)`", listed)) == set(COUNTED_CODE)
