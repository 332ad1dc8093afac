"""`python -m evalkit.audit --self-test`: the audit audited.

A tiny random model and a synthetic stream (documents made of repeated phrases, so
n-gram caches have hits). Every built-in strategy and composition and every legal gallery
entry must get no FAIL, INCONCLUSIVE or NONDETERMINISTIC; every illegal gallery entry must
FAIL the check named for it. Prints the matrix (expected beside actual) and exits 1 on
any mismatch.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evalkit.audit.gallery import GALLERY
from evalkit.audit.result import FAIL, INCONCLUSIVE, NONDETERMINISTIC
from evalkit.audit.runner import CHECKS, Options, audit
from evalkit.audit.subject import Subject
from evalkit.cli import CliParser
from evalkit.data.shards import ByteTable, doc_starts
from evalkit.data.tokenizer import BOS_ID
from evalkit.engine.context import EvalData
from evalkit.engine.dist import DistInfo
from evalkit.engine.inputs import load_model
from evalkit.engine.report import markdown_table
from evalkit.flags import add_input_args
from evalkit.model.artifact import save_artifact
from evalkit.model.gpt import GPT, GPTConfig
from evalkit.model.quant import QuantSpec, quantize_state_dict
from evalkit.strategies.plugins import load_plugin
from evalkit.strategies.registry import REGISTRY, build_strategy

MIX, TILT = "mix:orders=2-4", "tilt:orders=2-4"
BAD = (FAIL, INCONCLUSIVE, NONDETERMINISTIC)
MAX_TARGETS = 16  # single-target re-runs per strategy (a count, not a time: verdicts must not depend on load)


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


def random_artifact(path: Path, cfg: GPTConfig) -> int:
    """A random model (matrices at std 0.08, a trained model's logit scale) written as a real
    int8 artifact at `path`; returns its bytes."""
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(std=0.08)
    return save_artifact(path, cfg, quantize_state_dict(model.state_dict(), QuantSpec(8)))


def tiny_model(tmp: Path, vocab: int = 1024) -> tuple[GPT, int]:
    """A random 2-layer model, through a real artifact file (so the budget check has bytes)."""
    cfg = GPTConfig(vocab_size=vocab, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, train_seq_len=64)
    path = tmp / "selftest.ptz"
    nbytes = random_artifact(path, cfg)
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


def _row(label: str, checks, expect: str | None) -> tuple[dict, bool]:
    """A legal strategy gets no FAIL/INCONCLUSIVE/NONDETERMINISTIC; an illegal one must FAIL
    its named check (failing others too is fine: several rules catch most tricks)."""
    got = {c.name: c.status for c in checks}
    ok = got.get(expect) == FAIL if expect else not any(v in BAD for v in got.values())
    row = {"strategy": label, "expected": f"FAIL {expect}" if expect else "legal"}
    for name in CHECKS:
        v = got.get(name, "-")
        row[name] = v + (" *" if name == expect else "")
    row["verdict"] = "ok" if ok else "WRONG"
    return row, ok


def stream_maker(f: int) -> EvalData:
    return synthetic_stream(n_docs=6 * f, doc_len=260 * f)[0]


def run_matrix(only: set[str] | None = None) -> list[tuple[str, object, list]]:
    """(label, gallery entry or None, checks) for every built-in case and gallery entry."""
    _, table = synthetic_stream()
    info = DistInfo(0, 1, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        model, nbytes = tiny_model(Path(tmp))
    subjects = [(label, (lambda n=name, o=opts_for(extra): build_strategy(n, o)), mixer, None)
                for label, name, extra, mixer in builtin_cases()]
    for g in GALLERY:
        cls = load_plugin(g.spec)
        subjects.append((f"{g.cls}", (lambda c=cls: c(opts_for([]))), None, g))
    out = []
    for label, make, mixer, entry in subjects:
        if only and label not in only:
            continue
        subject = Subject(label, make, model, info, mixer, seed=1337,
                          code_files=[entry.spec.split(":")[0]] if entry else [])
        result = audit(subject, stream_maker, table, Options(effort=1, probes=32, artifact_bytes=nbytes,
                                                                      max_targets=MAX_TARGETS))
        out.append((label, entry, result.checks))
    return out


def main(argv: list[str]) -> int:
    if argv:
        print(f"error: --self-test takes no other flags (got {' '.join(argv)})")
        return 2
    torch.set_num_threads(1)  # tiny matmuls: one thread beats two on a shared 2-core box (10x measured)
    t0 = time.perf_counter()
    rows, all_ok, notes = [], True, []
    for label, entry, checks in run_matrix():
        row, ok = _row(label, checks, entry.check if entry else None)
        rows.append(row)
        all_ok &= ok
        if entry and entry.check:
            notes += [f"{label}: {c.detail}" for c in checks if c.name == entry.check]
        if not ok:
            notes += [f"WRONG {label}: {c.name} {c.status}: {c.detail}" for c in checks if c.status in BAD]
    columns = ([("strategy", "strategy", ""), ("expected", "expected", "")] + [(c, c, "") for c in CHECKS]
               + [("verdict", "verdict", "")])
    print(markdown_table(rows, columns))
    print("* the check each illegal entry must fail; legal entries must get no FAIL, INCONCLUSIVE or NONDETERMINISTIC")
    print("\nwhat the failures say:")
    print("\n".join(f"- {f}" for f in notes))
    print(f"\n{len(rows)} strategies on a tiny random model and a synthetic stream, {time.perf_counter() - t0:.1f} s: "
          + ("every verdict as expected" if all_ok else "SELF-TEST FAILED (WRONG rows)"))
    return 0 if all_ok else 1
