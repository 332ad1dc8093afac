"""`python -m evalkit.audit ARTIFACT --val GLOB --tokenizer M [strategy flags]`: legality by behaviour.

Runs the rules of docs/legality.md as checks on a short prefix of the split (the first
`--audit-docs` documents, each cut to `--doc-tokens` tokens; longer when the strategy's
state needs more tokens to learn several times): the strategy runs twice as it is, then
again on copies of the tokens with targets, whole documents or suffixes replaced. One row
per check: verdict, what was tried, how much, and on failure the rule, the position
(document, offset), what was changed and expected vs got. Exit 0 if nothing fails, 1 if
a check FAILS, 3 if none fails but one is INCONCLUSIVE or NONDETERMINISTIC, 2 on bad
input. `--self-test` audits the built-ins and the gallery (evalkit/audit/gallery) on a
tiny model, or on ARTIFACT and a prefix of its split, and prints the matrix.
`--score-fn FILE.py:NAME` audits any eval loop as a black box instead (audit/blackbox.py).
"""
from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from evalkit.audit.positions import audit_stream
from evalkit.audit.result import FAIL, INCONCLUSIVE, NONDETERMINISTIC
from evalkit.audit.runner import Options, audit, make_subject, print_checks
from evalkit.cli import CliParser, run_cli
from evalkit.data.shards import ByteTable
from evalkit.data.tokenizer import load_sentencepiece
from evalkit.engine.context import EvalData
from evalkit.engine.report import provenance, write_json
from evalkit.errors import EvalkitError
from evalkit.flags import add_input_args, prepare

log = logging.getLogger(__name__)
DEFAULT_DOCS, DEFAULT_DOC_TOKENS = 8, 512


def build_parser(prog: str = "python -m evalkit.audit") -> argparse.ArgumentParser:
    p = CliParser(prog=prog, description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--strategy", default="sliding", help="registered strategy to audit (default sliding)")
    p.add_argument("--plugin", default=None,
                   help="audit a user strategy instead: FILE.py:CLASS (evalkit/strategies/plugins.py)")
    p.add_argument("--score-fn", default=None, metavar="FILE.py:NAME",
                   help="audit any eval loop as a black box instead (no ARTIFACT; see evalkit/audit/blackbox.py "
                        "and python -m evalkit.audit --score-fn X --help)")
    p.add_argument("--positions", type=int, default=128, help="positions whose full distribution is checked (C2)")
    p.add_argument("--thorough", action="store_true",
                   help="3x the targets, stride phases, suffix documents and probes")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds after which no new single-target re-run starts (default: none; the rest is "
                        "reported; verdicts then depend on the machine's speed)")
    p.add_argument("--audit-docs", type=int, default=DEFAULT_DOCS,
                   help=f"documents in the audited stream before it grows (default {DEFAULT_DOCS})")
    p.add_argument("--doc-tokens", type=int, default=DEFAULT_DOC_TOKENS,
                   help=f"cut each audited document to this many tokens (default {DEFAULT_DOC_TOKENS})")
    p.add_argument("--json", default=None, help="write every check, perturbation and outcome to this JSON file")
    p.add_argument("--self-test", action="store_true",
                   help="audit every built-in and the gallery, print the matrix: alone on a tiny random model, "
                        "or with ARTIFACT --val --tokenizer on that model and a prefix of that split")
    return p


def decoded_bytes(data: EvalData, tokenizer: str, table: ByteTable) -> int:
    """UTF-8 length of the audited text, decoded segment by segment (cut at boundary
    tokens, where decoding drops a leading space just as the byte rule does)."""
    sp = load_sentencepiece(tokenizer)
    cuts = np.flatnonzero(table.is_boundary[data.tokens.astype(np.int64)])
    total = 0
    for seg in np.split(data.tokens.astype(np.int64), cuts):
        ids = [int(i) for i in seg if not table.is_boundary[i]]
        total += len(sp.decode(ids).encode()) if ids else 0
    return total


def exit_code(checks) -> int:
    if any(c.status == FAIL for c in checks):
        return 1
    return 3 if any(c.status in (INCONCLUSIVE, NONDETERMINISTIC) for c in checks) else 0


def run(args: argparse.Namespace) -> int:
    for flag, v in (("--positions", args.positions), ("--audit-docs", args.audit_docs)):
        if v < 1:
            raise EvalkitError(f"{flag} {v}: must be >= 1")
    info, loaded, full_data = prepare(args)
    table = None if args.byte_sidecar else ByteTable.from_sentencepiece(args.tokenizer)
    subject = make_subject(args, loaded, info)
    if args.model:  # the user's model file is code the score needs (rule C8)
        subject.code_files.append(args.model.rpartition(":")[0])

    def make_stream(f: int) -> EvalData:  # f x the documents, each f x longer
        return audit_stream(full_data, args.audit_docs * f, args.doc_tokens * f)

    lengths = np.diff(np.append(full_data.doc_starts, full_data.n_tokens))
    opts = Options(effort=3 if args.thorough else 1, probes=args.positions, artifact_bytes=loaded.nbytes,
                   doc_lengths=lengths, time_budget=args.time_budget)
    result = audit(subject, make_stream, table, opts,
                   (lambda d: decoded_bytes(d, args.tokenizer, table)) if table is not None else (lambda d: None))
    print_checks(subject.label, result, f"a prefix of {full_data.source}, each document cut short")
    if args.byte_sidecar:
        print("note: with --byte-sidecar, replaced tokens keep the sidecar's byte counts and the UTF-8 text "
              "check is skipped")
    if args.json:
        write_json(args.json, {"subject": subject.label, "checks": [c.as_json() for c in result.checks],
                               "audited_tokens": result.data.n_tokens, "audited_docs": len(result.data.doc_starts),
                               "seconds": result.seconds,
                               **provenance(seed=args.seed, artifact=str(loaded.path), artifact_sha256=loaded.sha256,
                                            data=result.data.source, data_sha256=result.data.sha256)})
    return exit_code(result.checks)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        if any(a == "--score-fn" or a.startswith("--score-fn=") for a in argv):
            from evalkit.audit.blackbox import run as black_box, build_parser as black_box_parser

            return black_box(black_box_parser().parse_args(argv))
        if "--self-test" in argv:
            from evalkit.audit.selftest import artifact_bench, main as self_test

            rest = [a for a in argv if a != "--self-test"]  # alone: the tiny model; else ARTIFACT ...
            return self_test(artifact_bench(build_parser().parse_args(rest)) if rest else None)
        return run(build_parser().parse_args(argv))

    return run_cli(body)
