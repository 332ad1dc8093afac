"""`python -m evalkit.audit ARTIFACT --val GLOB --tokenizer M [strategy flags]`: legality by behaviour.

Runs the rules of docs/legality.md as checks on a short prefix of the split (the first
`--limit-docs` documents, each cut to `--doc-tokens` tokens): the strategy runs once with
probes of its full distribution, then again on copies of the tokens with one target or
one whole document replaced. One row per check: PASS/FAIL, what was tried and, on
failure, the first offending position with expected vs got. Exit 0 if every check
passes, 1 if any fails, 2 on bad input. `--self-test` audits the built-ins and the
gallery of illegal strategies (evalkit/audit/gallery) on a tiny model and prints the matrix.
`--score-fn FILE.py:NAME` audits any eval loop as a black box instead (audit/blackbox.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time


from evalkit.data.shards import ByteTable
from evalkit.cli import CliParser, run_cli
from evalkit.errors import EvalkitError
from evalkit.flags import add_input_args, prepare
from evalkit.audit.runner import audit, audit_stream, decoded_bytes, make_subject, print_checks
from evalkit.engine.report import provenance, write_json

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
    p.add_argument("--positions", type=int, default=256, help="positions whose full distribution is checked (C2)")
    p.add_argument("--perturb", type=int, default=4,
                   help="targets replaced one at a time (C1, C3, C5); one re-run each")
    p.add_argument("--doc-tokens", type=int, default=DEFAULT_DOC_TOKENS,
                   help=f"cut each audited document to this many tokens (default {DEFAULT_DOC_TOKENS})")
    p.add_argument("--json", default=None, help="write the checks and provenance to this JSON file")
    p.add_argument("--self-test", action="store_true",
                   help="alone: audit the built-ins and the illegal gallery on a tiny model, print the matrix")
    p.set_defaults(limit_docs=DEFAULT_DOCS)
    return p


def run(args: argparse.Namespace) -> int:
    for flag, v in (("--positions", args.positions), ("--perturb", args.perturb)):
        if v < 1:
            raise EvalkitError(f"{flag} {v}: must be >= 1")
    info, loaded, full_data = prepare(args)
    data = audit_stream(full_data, args.doc_tokens)
    table = None if args.byte_sidecar else ByteTable.from_sentencepiece(args.tokenizer)
    decoded = decoded_bytes(data, args.tokenizer, table) if table is not None else None
    subject = make_subject(args, loaded, info)
    if args.model:  # the user's model file is code the score needs (rule C8)
        subject.code_files.append(args.model.rpartition(":")[0])
    t0 = time.perf_counter()
    try:
        checks = audit(subject, data, table, positions=args.positions, perturb=args.perturb,
                       first_window=args.seq_len, artifact_bytes=loaded.nbytes, decoded=decoded)
    except EvalkitError:
        raise
    except Exception as e:  # a user's strategy crashed: say where, in one line, not a traceback
        if not args.plugin:
            raise
        raise EvalkitError(f"--plugin {args.plugin}: the strategy raised {type(e).__name__}: {e}") from None
    print_checks(subject.label, data, checks, time.perf_counter() - t0)
    if args.byte_sidecar:
        print("note: with --byte-sidecar, replaced tokens keep the sidecar's byte counts and the UTF-8 text "
              "check is skipped")
    if args.json:
        write_json(args.json, {"subject": subject.label, "checks": [vars(c) | {"status": c.status} for c in checks],
                               "audited_tokens": data.n_tokens, "audited_docs": len(data.doc_starts),
                               **provenance(seed=args.seed, artifact=str(loaded.path), artifact_sha256=loaded.sha256,
                                            data=data.source, data_sha256=data.sha256)})
    return 1 if any(c.passed is False for c in checks) else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        if any(a == "--score-fn" or a.startswith("--score-fn=") for a in argv):
            from evalkit.audit.blackbox import run as black_box, build_parser as black_box_parser

            return black_box(black_box_parser().parse_args(argv))
        if "--self-test" in argv:
            from evalkit.audit.selftest import main as self_test

            return self_test([a for a in argv if a != "--self-test"])
        return run(build_parser().parse_args(argv))

    return run_cli(body)

