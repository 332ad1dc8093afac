"""One audit of one strategy: the checks of audit/checks.py run on the short audit stream.

`audit()` runs the strategy once with probes of its full distribution, then again on
copies of the tokens with targets or a whole document replaced, and returns one
`CheckResult` per rule group. The command line (audit/command.py) and the self-test
(audit/selftest.py) both call it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from evalkit.model.artifact import counted_code_bytes
from evalkit.audit.checks import (CUDA_ATOL, Budget, CheckResult, Subject, check_budget,
                                  check_causality, check_isolation, check_ledger, check_normalization,
                                  check_target_independence, document_body, perturb_positions, perturbed,
                                  replacement, run_strategy, sample_positions)
from evalkit.data.tokenizer import BOS_ID
from evalkit.data.shards import ByteTable, doc_starts
from evalkit.data.tokenizer import load_sentencepiece
from evalkit.engine.context import EvalData
from evalkit.engine.cost import SPLIT_TOKENS
from evalkit.errors import EvalkitError
from evalkit.strategies.plugins import load_plugin, plugin_file
from evalkit.engine.report import markdown_table
from evalkit.strategies.registry import build_strategy


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
    full = full_tokens or SPLIT_TOKENS.get(vocab, data.n_tokens)
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
