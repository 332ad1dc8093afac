"""`python -m evalkit.audit --self-test`: the audit audited.

A tiny random model and a synthetic stream (documents made of repeated phrases, so
n-gram caches have hits); every built-in strategy and composition must PASS every
applicable check, and every gallery entry must FAIL the check named for it. Prints the
matrix (strategy x check) and exits 0 only if all of that holds.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evalkit.model.artifact import save_artifact
from evalkit.audit.checks import Subject
from evalkit.audit.runner import audit
from evalkit.cli import CliParser
from evalkit.flags import add_input_args
from evalkit.data.tokenizer import BOS_ID
from evalkit.data.shards import ByteTable, doc_starts
from evalkit.engine.dist import DistInfo
from evalkit.engine.context import EvalData
from evalkit.audit.gallery import GALLERY
from evalkit.engine.inputs import load_model
from evalkit.model.gpt import GPT, GPTConfig
from evalkit.strategies.plugins import load_plugin
from evalkit.model.quant import QuantSpec, quantize_state_dict
from evalkit.engine.report import markdown_table
from evalkit.strategies.registry import REGISTRY, build_strategy

CHECKS = ["normalization", "target independence", "causality", "ledger", "doc isolation", "budget"]
MIX, TILT = "mix:orders=2-4", "tilt:orders=2-4"


def synthetic_stream(n_docs: int = 6, doc_len: int = 260, vocab: int = 1024,
                     seed: int = 0) -> tuple[EvalData, ByteTable]:
    """Documents of phrases drawn from a small phrase book: contexts repeat, as in text."""
    rng = np.random.default_rng(seed)
    book = [rng.integers(2, vocab, size=rng.integers(3, 9)) for _ in range(40)]
    docs = []
    for _ in range(n_docs):
        body: list[int] = []
        while len(body) < doc_len:
            body.extend(book[int(rng.integers(len(book)))].tolist())
        docs.append([BOS_ID] + body[:doc_len])
    tokens = np.array([t for d in docs for t in d], dtype=np.uint16)
    ids = np.arange(vocab)
    table = ByteTable(base_bytes=(1 + ids * 7 % 6).astype(np.int16), leading_space=ids % 3 == 0, is_boundary=ids < 2)
    return EvalData(tokens, table.target_bytes(tokens), doc_starts(tokens), source="synthetic"), table


def tiny_model(tmp: Path, vocab: int = 1024) -> tuple[GPT, int]:
    """A random 2-layer model, through a real artifact file (so the budget check has bytes)."""
    cfg = GPTConfig(vocab_size=vocab, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, train_seq_len=64)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.08)
    path = tmp / "selftest.ptz"
    nbytes = save_artifact(path, cfg, quantize_state_dict(model.state_dict(), QuantSpec(8)))
    return load_model(str(path), torch.device("cpu")).model, nbytes


def opts_for(extra: list[str]) -> argparse.Namespace:
    """Strategy options as the command line would parse them (the flags score/audit share)."""
    parser = CliParser(prog="selftest")
    add_input_args(parser)
    return parser.parse_args(["selftest.ptz", "--val", "-", "--tokenizer", "-", "--seq-len", "64",
                                      "--stride", "32", "--batch-windows", "4", *extra])


def builtin_cases() -> list[tuple[str, str, list[str], str | None]]:
    """(label, strategy, extra flags, mixer) for every registered strategy and composition."""
    cases = [("flat", "flat", [], None), ("flat(doc)", "flat", ["--doc-isolated"], None),
             ("sliding", "sliding", [], None), ("sliding(doc)", "sliding", ["--doc-isolated"], None),
             ("sliding+mix", "sliding", [], MIX), ("sliding+tilt", "sliding", [], TILT),
             ("sliding(doc)+mix", "sliding", ["--doc-isolated"], MIX)]
    parser_flags = set(vars(opts_for([])))
    for name in sorted(set(REGISTRY) - {"flat", "sliding"}):
        cases += [(name, name, [], None), (f"{name}+mix", name, [], MIX)]
        if name == "ttt" and "ttt_phases" in parser_flags:
            cases.append(("ttt phased", name, ["--ttt-phases", "2,4"], None))
    return cases


def _row(label: str, checks, expect_fail: str | None) -> tuple[dict, bool]:
    """A built-in must pass every applicable check; an illegal entry must fail its named
    check (failing others too is fine: several rules catch most tricks)."""
    row, ok = {"strategy": label}, True
    for c in checks:
        if expect_fail is None:
            good = c.passed is not False
        else:
            good = c.passed is False or c.name != expect_fail
        ok &= good
        row[c.name] = c.status + ("" if good else " !") + (" *" if c.name == expect_fail else "")
    row["verdict"] = "ok" if ok else "WRONG"
    return row, ok


def run_matrix() -> list[tuple[str, object, list]]:
    """(label, gallery entry or None, checks) for every built-in case and gallery entry."""
    data, table = synthetic_stream()
    info = DistInfo(0, 1, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        model, nbytes = tiny_model(Path(tmp))
    subjects = [(label, (lambda n=name, o=opts_for(extra): build_strategy(n, o)), mixer, None)
                for label, name, extra, mixer in builtin_cases()]
    for g in GALLERY:
        cls = load_plugin(g.spec)
        subjects.append((f"{g.cls} [{g.check}]", (lambda c=cls: c(opts_for([]))), None, g))
    out = []
    for label, make, mixer, entry in subjects:
        subject = Subject(label, make, model, info, mixer, seed=1337, code_files=[])
        out.append((label, entry, audit(subject, data, table, positions=64, perturb=3, first_window=64,
                                        artifact_bytes=nbytes)))
    return out


def main(argv: list[str]) -> int:
    if argv:
        print(f"error: --self-test takes no other flags (got {' '.join(argv)})")
        return 2
    torch.set_num_threads(1)  # tiny matmuls: one thread beats two on a shared 2-core box (10x measured)
    t0 = time.perf_counter()
    rows, all_ok, failures = [], True, []
    for label, entry, checks in run_matrix():
        row, ok = _row(label, checks, entry.check if entry else None)
        rows.append(row)
        all_ok &= ok
        if entry:
            failures += [f"{label}: {c.detail}" for c in checks if c.name == entry.check]
    columns = [("strategy", "strategy", "")] + [(c, c, "") for c in CHECKS] + [("verdict", "verdict", "")]
    print(markdown_table(rows, columns))
    print("* the check each illegal entry must fail; ! a result the self-test did not expect")
    print("\nwhat the gallery's failures say:")
    print("\n".join(f"- {f}" for f in failures))
    print(f"\n{len(rows)} strategies on a tiny random model and a synthetic stream, {time.perf_counter() - t0:.1f} s: "
          + ("every built-in passes, every illegal entry fails its check" if all_ok
             else "SELF-TEST FAILED (! marks it)"))
    return 0 if all_ok else 1
