"""`python -m evalkit.audit --self-test`: the audit audited.

A tiny random model and a synthetic stream (documents made of repeated phrases, so
n-gram caches have hits). Every built-in strategy and composition and every legal gallery
entry must get no FAIL, INCONCLUSIVE or NONDETERMINISTIC; every illegal gallery entry must
FAIL the check named for it. Prints the matrix (expected beside actual) and exits 1 on
any mismatch.

`python -m evalkit.audit ARTIFACT --val G --tokenizer M --self-test` runs the same matrix on
that model and a prefix of that split (--audit-docs, --doc-tokens): a reviewer sees the
audit catch every cheat, and pass every legal strategy, on a trained model and real text,
not only on the tiny one.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from evalkit.audit.gallery import GALLERY
from evalkit.audit.positions import audit_stream
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
from evalkit.errors import EvalkitError
from evalkit.flags import add_input_args, prepare
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
    """Documents of phrases drawn from a small phrase book: contexts repeat, as in text.
    Lengths vary (0.5-1.5x doc_len, mean doc_len) as real documents' do: a strategy that
    orders documents by length (TTT's longest-first queue) then scores them out of stream
    order, which equal lengths would hide (an n-gram context crossing into an unscored
    document passed every check on equal documents and failed on FineWeb). Documents end
    with one of two closing phrases, as text often does, so that contexts running across a
    BOS repeat and a cache has seen them."""
    rng = np.random.default_rng(seed)
    book = [rng.integers(2, vocab, size=rng.integers(3, 9)) for _ in range(40)]
    docs = []
    for k in range(n_docs):
        length = max(16, int(doc_len * (0.5 + (k * 0.618034) % 1.0)))  # spread, not sorted
        ending = book[k % 2].tolist()
        body: list[int] = []
        while len(body) < length - len(ending):
            body.extend(book[int(rng.integers(2, len(book)))].tolist())
        docs.append([BOS_ID] + body[:length - len(ending)] + ending)
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


@dataclass
class Bench:
    """What the matrix runs on: a model, its artifact's bytes, the audited stream (grown by
    a factor, as the audit grows it) and the byte table used for replacements."""

    model: torch.nn.Module
    nbytes: int
    make_stream: Callable[[int], EvalData]
    table: ByteTable | None
    label: str


def tiny_bench(tmp: Path) -> Bench:
    """A tiny random model and the synthetic stream (the default self-test)."""
    model, nbytes = tiny_model(tmp)
    return Bench(model, nbytes, lambda f: synthetic_stream(n_docs=6 * f, doc_len=260 * f)[0], synthetic_stream()[1],
                 "a tiny random model and a synthetic stream")


def artifact_bench(args: argparse.Namespace) -> Bench:
    """The user's artifact and a prefix of their split, as `python -m evalkit.audit` reads
    them (its parsed flags; --audit-docs, --doc-tokens): the gallery's cheats on a trained
    model and real text."""
    given = [f for f, v in (("--strategy", args.strategy != "sliding"), ("--plugin", args.plugin),
                            ("--ngram", args.ngram), ("--score-fn", args.score_fn)) if v]
    if given:
        raise EvalkitError(f"--self-test with {given[0]}: the self-test audits every built-in and gallery entry; "
                           "drop the flag (or audit one strategy without --self-test)")
    args.seq_len = args.seq_len or 64  # the matrix's strategies run at seq 64 / stride 32 (opts_for)
    _, loaded, full = prepare(args)
    table = None if args.byte_sidecar else ByteTable.from_sentencepiece(args.tokenizer)
    return Bench(loaded.model, loaded.nbytes, lambda f: audit_stream(full, args.audit_docs * f, args.doc_tokens * f),
                 table, f"{loaded.path.name} and a prefix of {full.source}")


def run_matrix(only: set[str] | None = None, bench: Bench | None = None) -> Iterator[tuple[str, object, list]]:
    """(label, gallery entry or None, checks) for every built-in case and gallery entry, each
    as soon as its audit is done."""
    info = DistInfo(0, 1, torch.device("cpu"))
    if bench is None:
        with tempfile.TemporaryDirectory() as tmp:
            bench = tiny_bench(Path(tmp))
    subjects = [(label, (lambda n=name, o=opts_for(extra): build_strategy(n, o)), mixer, None)
                for label, name, extra, mixer in builtin_cases()]
    for g in GALLERY:
        cls = load_plugin(g.spec)
        subjects.append((f"{g.cls}", (lambda c=cls: c(opts_for([]))), None, g))
    for label, make, mixer, entry in subjects:
        if only and label not in only:
            continue
        subject = Subject(label, make, bench.model, info, mixer, seed=1337,
                          code_files=[entry.spec.split(":")[0]] if entry else [])
        result = audit(subject, bench.make_stream, bench.table,
                       Options(effort=1, probes=32, artifact_bytes=bench.nbytes, max_targets=MAX_TARGETS))
        yield label, entry, result.checks


def main(bench: Bench | None = None) -> int:
    """On `bench` (artifact_bench: its --threads applies), else on the tiny random model."""
    if bench is None:
        torch.set_num_threads(1)  # tiny matmuls: one thread beats two on a shared 2-core box (10x measured)
    t0 = time.perf_counter()
    rows, all_ok, notes = [], True, []
    total = len(builtin_cases()) + len(GALLERY)
    for label, entry, checks in run_matrix(bench=bench):
        row, ok = _row(label, checks, entry.check if entry else None)
        rows.append(row)
        all_ok &= ok
        print(f"[{len(rows)}/{total}] {label}: {'ok' if ok else 'WRONG'} ({time.perf_counter() - t0:.0f} s so far)",
              file=sys.stderr, flush=True)
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
    on = bench.label if bench else "a tiny random model and a synthetic stream"
    print(f"\n{len(rows)} strategies on {on}, {time.perf_counter() - t0:.1f} s: "
          + ("every verdict as expected" if all_ok else "SELF-TEST FAILED (WRONG rows)"))
    return 0 if all_ok else 1
