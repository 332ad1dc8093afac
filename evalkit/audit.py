"""`python -m evalkit.audit ARTIFACT --val GLOB --tokenizer M [strategy flags]`: legality by behaviour.

Runs the rules of docs/legality.md as checks on a short prefix of the split (the first
`--limit-docs` documents, each cut to `--doc-tokens` tokens): the strategy runs once with
probes of its full distribution, then again on copies of the tokens with one target or
one whole document replaced. One row per check: PASS/FAIL, what was tried and, on
failure, the first offending position with expected vs got. Exit 0 if every check
passes, 1 if any fails, 2 on bad input. `--self-test` audits the built-ins and the
gallery of illegal strategies (evalkit/gallery) on a tiny model and prints the matrix.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from evalkit.artifact import counted_code_bytes
from evalkit.audit_checks import (CHALLENGE_SPLIT_TOKENS, CUDA_ATOL, Budget, CheckResult, Subject, check_budget,
                                  check_causality, check_isolation, check_ledger, check_normalization,
                                  check_target_independence, document_body, perturb_positions, perturbed,
                                  replacement, run_strategy, sample_positions)
from evalkit.data import BOS_ID, ByteTable, doc_starts
from evalkit.tokenizer import load_sentencepiece
from evalkit.engine import EvalData
from evalkit.cli import CliParser, run_cli
from evalkit.errors import EvalkitError
from evalkit.plugins import load_plugin, plugin_file
from evalkit.report import markdown_table, provenance, write_json
from evalkit.strategies import build_strategy

log = logging.getLogger(__name__)
DEFAULT_DOCS, DEFAULT_DOC_TOKENS = 8, 512


def build_parser(prog: str = "python -m evalkit.audit") -> argparse.ArgumentParser:
    from evalkit.score import add_input_args  # the score CLI's flags, so commands carry over verbatim

    p = CliParser(prog=prog, description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--strategy", default="sliding", help="registered strategy to audit (default sliding)")
    p.add_argument("--plugin", default=None, help="audit a user strategy instead: FILE.py:CLASS (evalkit/plugins.py)")
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


def audit_stream(data: EvalData, doc_tokens: int) -> EvalData:
    """The documents of `data`, each cut to its first `doc_tokens` tokens: many documents
    in few tokens, so re-runs stay cheap and isolation has neighbours to check."""
    if doc_tokens < 2:
        raise EvalkitError(f"--doc-tokens {doc_tokens}: must be >= 2")
    ends = np.append(data.doc_starts[1:], data.n_tokens)
    keep = np.concatenate([np.arange(s, min(e, s + doc_tokens)) for s, e in zip(data.doc_starts, ends)])
    tokens = data.tokens[keep]
    target_bytes = data.target_bytes[keep].copy()  # a cut keeps each position's predecessor except at a BOS
    target_bytes[0] = 0
    return EvalData(tokens, target_bytes, doc_starts(tokens), source=data.source)


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


def _doc_replacement(data: EvalData, body: np.ndarray, vocab: int, table: ByteTable | None) -> np.ndarray:
    allowed = np.flatnonzero(~table.is_boundary) if table is not None else np.arange(vocab)
    allowed = allowed[allowed != BOS_ID]
    x = data.tokens[body].astype(np.int64)
    new = allowed[(np.searchsorted(allowed, x) + allowed.size // 2) % allowed.size]
    return np.where(new == x, allowed[(np.searchsorted(allowed, x) + 1) % allowed.size], new)


def audit(subject: Subject, data: EvalData, table: ByteTable | None, *, positions: int = 256, perturb: int = 4,
          first_window: int = 64, artifact_bytes: int = 0, decoded: int | None = None,
          full_tokens: int | None = None) -> list[CheckResult]:
    """Every check for one strategy on `data` (already the short audit stream)."""
    vocab = subject.model.cfg.vocab_size
    atol = 0.0 if subject.info.device.type == "cpu" else CUDA_ATOL
    targets = perturb_positions(data, perturb, first_window)
    probes = np.union1d(sample_positions(data, positions, subject.seed), targets)
    t0 = time.perf_counter()
    base = run_strategy(subject, data, frozenset(int(p) for p in probes))
    seconds = time.perf_counter() - t0
    reruns, doc_run = {}, None
    if not base.error:
        for t in targets:
            new = replacement(data.tokens, t, vocab, table)
            reruns[t] = (new, run_strategy(subject, perturbed(data, np.array([t]), np.array([new]), table),
                                           frozenset({t})))
        if len(data.doc_starts) >= 2:
            k = (len(data.doc_starts) - 1) // 2  # a middle document: neighbours on both sides
            body = document_body(data, k)
            doc_run = (k, run_strategy(subject, perturbed(data, body, _doc_replacement(data, body, vocab, table),
                                                          table)))
    claimed = subject.claims_isolation()
    why = "an n-gram cache spans the whole split" if subject.mixer_spec else ""
    code = counted_code_bytes() + sum(Path(f).stat().st_size for f in subject.code_files)
    full = full_tokens or CHALLENGE_SPLIT_TOKENS.get(vocab, data.n_tokens)
    return [check_normalization(base, data, probes),
            check_target_independence(base, reruns, atol),
            check_causality(base, reruns, doc_run, data, atol),
            check_ledger(base, data, decoded),
            check_isolation(base, doc_run, data, claimed, atol, why),
            check_budget(Budget(artifact_bytes, code, base.flops, data.n_tokens, full, seconds))]


def print_checks(label: str, data: EvalData, checks: list[CheckResult], seconds: float) -> None:
    print(f"audit of {label} on {data.n_tokens:,} tokens in {len(data.doc_starts)} documents "
          f"(a prefix of {data.source}, each document cut short), {seconds:.1f} s")
    rows = [{"check": c.name, "rule": c.rule, "result": c.status, "tried": c.tried, "detail": c.detail}
            for c in checks]
    print(markdown_table(rows, [("check", "check", ""), ("rule", "rule", ""), ("result", "result", ""),
                                ("tried", "what was tried", ""), ("detail", "first offence / numbers", "")]))


def make_subject(args: argparse.Namespace, loaded, info) -> Subject:
    if len(args.ngram) > 1:
        raise EvalkitError(f"--ngram given {len(args.ngram)} times: audit one combination at a time")
    spec = args.ngram[0] if args.ngram else None
    if args.plugin:
        cls = load_plugin(args.plugin)
        make, label, files = (lambda: cls(args)), f"{args.plugin}", [str(plugin_file(args.plugin))]
    else:
        build_strategy(args.strategy, args)  # fail fast on an unknown name
        make, label, files = (lambda: build_strategy(args.strategy, args)), args.strategy, []
    return Subject(label + (f"+{spec}" if spec else ""), make, loaded.model, info, spec, args.seed, files)


def run(args: argparse.Namespace) -> int:
    from evalkit.score import prepare

    for flag, v in (("--positions", args.positions), ("--perturb", args.perturb)):
        if v < 1:
            raise EvalkitError(f"{flag} {v}: must be >= 1")
    info, loaded, full_data = prepare(args)
    data = audit_stream(full_data, args.doc_tokens)
    table = None if args.byte_sidecar else ByteTable.from_sentencepiece(args.tokenizer)
    decoded = decoded_bytes(data, args.tokenizer, table) if table is not None else None
    subject = make_subject(args, loaded, info)
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
        if "--self-test" in argv:
            from evalkit.gallery.selftest import main as self_test

            return self_test([a for a in argv if a != "--self-test"])
        return run(build_parser().parse_args(argv))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
