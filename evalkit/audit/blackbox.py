"""Black-box audit of any eval loop: `python -m evalkit.audit --score-fn FILE.py:NAME --val G --tokenizer M`.

`NAME(tokens: np.ndarray) -> np.ndarray` takes a token stream (n,) and returns the NLL
(nats) of each of its n - 1 targets (target t predicted from tokens[:t]): a few lines
around a submission's own eval loop. It may instead return `(positions, nll)` scoring
events (positions may repeat: coverage counts them) or `(positions, nll, step)`, where
step numbers the scoring calls; with steps, "earlier" means an earlier step (score-first),
without them stream order (stream-causal, stricter). If NAME also maps (B, n) streams to
(B, n - 1) it is used to batch the normalization candidates (probed, never assumed).

The checks need nothing but NAME, the tokens and the tokenizer:
- coverage (C4, C9): every target scored once, finite; bytes from the tokenizer.
- determinism: two identical calls agree (otherwise the perturbation checks cannot be
  read; with --atol they are read to that tolerance).
- causality (C1, C3): x_u replaced at --perturb positions, and every token after u
  replaced at --suffix positions: no score fixed before the change may move.
- doc isolation (C10, with --claims-doc-isolation): a middle document replaced: no score
  in another document may move.
- normalization by substitution (C2, C5): at --norm-positions positions t, NAME runs the
  stream with each token a of the alphabet in place of x_t, and sum_a exp(-nll_t(a)) must
  be 1; the distribution is never asked for, it is measured. Each run is cut after t, at
  the shortest length (t+1, t+2, t+4, ...) that reproduces the full stream's score at t,
  which is sound once causality has passed. A gate or backoff that reads the target makes
  the sum differ from 1 as well, so this also tests target independence.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from evalkit.audit.positions import audit_stream, document_body, perturb_positions, replacement
from evalkit.audit.result import FAIL, NA, PASS, CheckResult
from evalkit.cli import CliParser, run_cli
from evalkit.data.shards import ByteTable
from evalkit.data.tokenizer import BOS_ID
from evalkit.engine.context import EvalData
from evalkit.engine.inputs import load_data
from evalkit.engine.report import markdown_table, provenance, write_json
from evalkit.errors import EvalkitError
from evalkit.strategies.plugins import load_object

NORM_TOL = 1e-5  # |sum_a p - 1|: float32 log-softmax over 8192 tokens alone rounds to ~3e-6
TRUNC_TOL = 1e-5  # nats: a cut stream may change the batch shapes of a float32 model


@dataclass
class Scored:
    """One call's scores on an (n,) stream, per target position 1..n-1."""

    nll: np.ndarray  # float64 (n,), position 0 unused (nan)
    count: np.ndarray  # int64 (n,) times scored
    step: np.ndarray  # float64 (n,) scoring step (the position itself without events)
    problem: str = ""  # why the output is not one score per target


@dataclass
class ScoreFn:
    """NAME behind one door: output checks, cost accounting, optional batching."""

    fn: object
    spec: str
    batch: int = 128
    vectorised: bool = False
    calls: int = 0
    tokens_fed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def _call(self, tokens: np.ndarray):
        t0 = time.perf_counter()
        try:
            out = self.fn(tokens)
        except Exception as e:  # user code: one line, not a traceback
            raise EvalkitError(f"--score-fn {self.spec}: raised {type(e).__name__}: {e} "
                               f"(on a stream of shape {tuple(tokens.shape)})") from None
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.tokens_fed += int(tokens.size)
        return out

    def one(self, tokens: np.ndarray) -> Scored:
        return parse_output(self._call(np.ascontiguousarray(tokens)), tokens.size)

    def many(self, streams: np.ndarray, col: int) -> np.ndarray:
        """(B, n) streams -> (B,) NLL at target `col`, batched when NAME is vectorised."""
        if not self.vectorised:
            return np.array([self.one(s).nll[col] for s in streams])
        out = []
        for i in range(0, len(streams), self.batch):
            part = np.ascontiguousarray(streams[i:i + self.batch])
            try:
                res = np.asarray(self._call(part), dtype=np.float64)
            except EvalkitError as e:
                res = np.zeros(0)
                self.notes.append(f"batched calls stopped ({e}); one call per candidate from there")
            if res.shape != (len(part), part.shape[1] - 1):
                self.vectorised = False
                return np.concatenate(out + [self.many(streams[i:], col)])
            out.append(res[:, col - 1])
        return np.concatenate(out)

    def probe_vectorised(self, tokens: np.ndarray, tol: float) -> None:
        """Use batches only if (3, n) gives (3, n - 1) equal to three single calls."""
        a = tokens[:min(tokens.size, 64)].copy()
        b, c = a.copy(), a.copy()
        b[-1] = (int(b[-1]) + 1) % max(int(a.max()) + 2, 2)
        c[-2] = b[-1]
        try:
            both = np.asarray(self.fn(np.stack([a, b, c])), dtype=np.float64)
        except Exception as e:
            self.notes.append(f"not vectorised ((3, n) input raised {type(e).__name__}): one call per candidate")
            return
        single = np.stack([self.one(s).nll[1:] for s in (a, b, c)])
        if both.shape == single.shape and np.allclose(both, single, rtol=0, atol=max(tol, 1e-6), equal_nan=True):
            self.vectorised = True
        else:
            self.notes.append(f"not vectorised ((3, n) input gave {both.shape}, not three single calls' "
                              f"{single.shape} values): one call per candidate")


def parse_output(out, n: int) -> Scored:
    """Array (n-1,) or events (positions, nll[, step]) -> per-position scores."""
    nll, count, step = np.full(n, np.nan), np.zeros(n, np.int64), np.arange(n, dtype=np.float64)
    if isinstance(out, tuple) and len(out) in (2, 3):
        pos = np.asarray(out[0], dtype=np.int64).ravel()
        val = np.asarray(out[1], dtype=np.float64).ravel()
        if pos.shape != val.shape or (pos.size and (pos.min() < 1 or pos.max() >= n)):
            return Scored(nll, count, step, f"events: {pos.size} positions and {val.size} scores, positions must "
                                            f"be targets 1..{n - 1}")
        np.add.at(count, pos, 1)
        nll[pos] = val  # a rescored position keeps its last score (coverage reports it)
        if len(out) == 3:
            step[:] = np.inf
            step[pos] = np.asarray(out[2], dtype=np.float64).ravel()
        return Scored(nll, count, step)
    arr = np.asarray(out, dtype=np.float64)
    if arr.shape != (n - 1,):
        return Scored(nll, count, step, f"returned shape {arr.shape} for a stream of {n} tokens; expected "
                                        f"({n - 1},): one NLL per target")
    nll[1:], count[1:] = arr, 1
    return Scored(nll, count, step)


def _verdict(name: str, rule: str, ok: bool | None, tried: str, detail: str = "") -> CheckResult:
    """A black-box check's result: ok True PASS, False FAIL, None n/a."""
    return CheckResult(name, rule, {True: PASS, False: FAIL, None: NA}[ok], tried, detail)


# -- the checks -------------------------------------------------------------------------
def check_coverage(base: Scored, data: EvalData) -> CheckResult:
    tried = "one call on the stream: every target scored exactly once, finite, nll >= 0"
    if base.problem:
        return _verdict("coverage", "C4,C9", False, tried, base.problem)
    bad = np.flatnonzero(base.count[1:] != 1) + 1
    if bad.size:
        p = int(bad[0])
        return _verdict("coverage", "C4,C9", False, tried,
                           f"position {p} scored {int(base.count[p])} times (expected 1); {bad.size} targets "
                           "not scored exactly once")
    fin = np.isfinite(base.nll[1:])
    if not fin.all():
        p = int(np.argmin(fin)) + 1
        return _verdict("coverage", "C4,C9", False, tried, f"position {p}: nll = {base.nll[p]} (not finite)")
    if (neg := base.nll[1:] < 0).any():
        p = int(np.argmax(neg)) + 1
        return _verdict("coverage", "C2", False, tried, f"position {p}: nll = {base.nll[p]:.6g} < 0, i.e. p > 1")
    nbytes = int(data.target_bytes[1:].sum())
    bpb = float(base.nll[1:].sum()) / math.log(2) / max(nbytes, 1)
    return _verdict("coverage", "C4,C9", True, tried,
                       f"{data.n_tokens - 1:,} targets once; {nbytes:,} bytes; val_bpb {bpb:.4f} on this stream")


def check_determinism(base: Scored, again: Scored, atol: float) -> tuple[CheckResult, float]:
    """(result, the tolerance later comparisons use: atol, or the jitter seen x 4)."""
    tried = "the same stream twice: identical scores"
    diff = np.abs(np.nan_to_num(base.nll - again.nll, nan=0.0))
    worst = float(diff.max()) if diff.size else 0.0
    if worst <= atol:
        return _verdict("determinism", "-", True, tried, "bitwise equal" if worst == 0 else f"max |Δ| {worst:.2g}"
                           ), atol
    p = int(np.argmax(diff))
    return _verdict("determinism", "-", False, tried,
                       f"position {p}: nll {base.nll[p]:.9g} then {again.nll[p]:.9g} (|Δ| {worst:.3g} > --atol "
                       f"{atol:g}); later checks are read to |Δ| <= {4 * worst:.2g}"), 4 * worst


def first_moved(base: Scored, run: Scored, changed: np.ndarray, tol: float) -> int | None:
    """A score fixed before any changed token's score that moved (None: none moved)."""
    s0 = float(base.step[changed].min())
    before = base.step < s0
    before[0] = False
    moved = before & ~(np.abs(base.nll - run.nll) <= tol)
    return int(np.flatnonzero(moved)[0]) if moved.any() else None


def suffix_tokens(tokens: np.ndarray, u: int, allowed: np.ndarray) -> np.ndarray:
    """tokens with every non-BOS token after u mapped half the allowed alphabet away."""
    out = tokens.copy()
    tail = np.arange(u + 1, tokens.size)
    tail = tail[tokens[tail] != BOS_ID]
    idx = (np.searchsorted(allowed, tokens[tail].astype(np.int64)) + allowed.size // 2) % allowed.size
    out[tail] = allowed[idx]
    return out


def check_causality(fn: ScoreFn, data: EvalData, base: Scored, table: ByteTable, perturb: int, suffix: int,
                    tol: float) -> tuple[CheckResult, list[int]]:
    tokens, V = data.tokens, table.vocab_size
    allowed = np.flatnonzero(~table.is_boundary)
    allowed = allowed[allowed != BOS_ID]
    singles = perturb_positions(data, perturb, first_window=64) if perturb else []
    tails = [int(data.n_tokens * (i + 1) / (suffix + 1)) for i in range(suffix)]
    cases = []
    for t in singles:
        new = tokens.copy()
        new[t] = replacement(tokens, t, V, table)
        cases.append((f"x_{t} replaced by {int(new[t])}", np.array([t]), new))
    for u in tails:
        cases.append((f"every token after {u} replaced", np.arange(u + 1, data.n_tokens), suffix_tokens(tokens, u,
                                                                                                       allowed)))
    order = "stream order" if (base.step == np.arange(base.step.size)).all() else "the loop's scoring steps"
    tried = (f"replaced x_t at {singles} and everything after {tails}: no score fixed before the change "
             f"may move (in {order})")
    for desc, changed, new in cases:
        run = fn.one(new)
        p = first_moved(base, run, changed, tol)
        if p is not None:
            return _verdict("causality", "C1,C3", False, tried,
                               f"{desc}: position {p} moved: nll {run.nll[p]:.9g}, expected {base.nll[p]:.9g} "
                               "(it read a token that was not yet scored)"), singles
    return _verdict("causality", "C1,C3", True, tried, "bitwise equal" if tol == 0 else f"|Δ| <= {tol:.2g}"
                       ), singles


def check_isolation(fn: ScoreFn, data: EvalData, base: Scored, table: ByteTable, claimed: bool,
                    tol: float) -> CheckResult:
    if len(data.doc_starts) < 3:
        return _verdict("doc isolation", "C10", None, "needs 3 or more documents in the audited stream")
    k = (len(data.doc_starts) - 1) // 2
    body = document_body(data, k)
    allowed = np.flatnonzero(~table.is_boundary)
    allowed = allowed[allowed != BOS_ID]
    new = data.tokens.copy()
    new[body] = allowed[(np.searchsorted(allowed, data.tokens[body].astype(np.int64)) + allowed.size // 2)
                        % allowed.size]
    run = fn.one(new)
    doc = data.doc_of_target()
    moved = (doc != k) & ~(np.abs(base.nll - run.nll) <= tol)
    moved[0] = False
    tried = f"replaced document {k}: no score in another document may move"
    if not moved.any():
        return _verdict("doc isolation", "C10", True if claimed else None, tried, "no other document moved")
    p = int(np.flatnonzero(moved)[0])
    detail = (f"position {p} in document {int(doc[p])} moved: nll {run.nll[p]:.9g}, expected {base.nll[p]:.9g}")
    if not claimed:
        return _verdict("doc isolation", "C10", None, "not claimed (--claims-doc-isolation)", detail)
    return _verdict("doc isolation", "C10", False, tried, detail + " (state crossed a BOS)")


def norm_positions(data: EvalData, k: int) -> list[int]:
    """k targets spread over the stream's 10%..50% (a candidate run costs about t tokens,
    and by then caches have counts), each moved to the nearest one whose context token
    occurred twice before (where a cache has something to say)."""
    tokens, n = data.tokens, data.n_tokens
    starts = set(int(s) for s in data.doc_starts) | set(int(s) + 1 for s in data.doc_starts)
    chosen: list[int] = []
    for w in (int(n * (0.1 + 0.4 * (i + 0.5) / k)) for i in range(k)):
        for p in np.argsort(np.abs(np.arange(n) - w), kind="stable")[:1024]:
            p = int(p)
            if p < 2 or p in starts or p in chosen:
                continue
            if np.count_nonzero(tokens[:p - 1] == tokens[p - 1]) >= 2:
                chosen.append(p)
                break
    return sorted(chosen)


def cut_length(fn: ScoreFn, tokens: np.ndarray, t: int, full: float, tol: float) -> tuple[int, float]:
    """The shortest of t+1, t+2, t+4, ... (else the whole stream) whose score at t equals
    the full stream's, and that score."""
    n, step = tokens.size, 1
    while t + step < n:
        got = fn.one(tokens[:t + step]).nll[t]
        if abs(got - full) <= tol:
            return t + step, got
        step *= 2
    return n, full


def check_normalization(fn: ScoreFn, data: EvalData, base: Scored, vocab: int, positions: list[int], tol: float,
                        trunc_tol: float, causal_ok: bool) -> tuple[CheckResult, dict]:
    tried = (f"at {len(positions)} positions {positions}: each of the {vocab:,} tokens in place of x_t, "
             "sum_a exp(-nll_t(a)) = 1")
    if not causal_ok:
        why = "not checked: causality failed, so a stream cut after t would not measure the scored distribution"
        return _verdict("normalization", "C2,C5", None, tried, why), {}
    sums, cost = {}, {"positions": positions, "vocab": vocab, "lengths": [], "seconds": 0.0, "tokens": 0}
    t0, tok0 = time.perf_counter(), fn.tokens_fed
    for t in positions:
        L, _ = cut_length(fn, data.tokens, t, float(base.nll[t]), trunc_tol)
        cost["lengths"].append(L)
        streams = np.repeat(data.tokens[None, :L], vocab, axis=0)
        streams[:, t] = np.arange(vocab, dtype=streams.dtype)
        nll = fn.many(streams, t)  # (V,) the measured distribution at t
        fast = float(nll[int(data.tokens[t])])
        finite = np.isfinite(nll)
        total = math.fsum(np.exp(-nll[finite]))
        sums[t] = total
        if not abs(fast - base.nll[t]) <= max(tol, trunc_tol):
            return _verdict("normalization", "C2,C5", False, tried,
                               f"position {t}: the stream scored nll {base.nll[t]:.9g} but the same stream (cut at "
                               f"{L}) among the candidates scored {fast:.9g}"), cost
        if not finite.all() and total <= 1 + tol:
            cost["unmeasured"] = int((~finite).sum())
            continue  # a lower bound that is not over 1 proves nothing
        if abs(total - 1.0) > tol:
            cost.update(seconds=time.perf_counter() - t0, tokens=fn.tokens_fed - tok0, sums=sums)
            listed = ", ".join(f"{p}: {s:.6g}" for p, s in sums.items())
            return _verdict("normalization", "C2,C5", False, tried,
                               f"position {t}: sum over the {vocab:,} tokens of exp(-nll_t(a)) = {total:.6g} "
                               f"(expected 1 ± {tol:g}); sums so far {{{listed}}} (not a distribution, or it "
                               "read the target)"), cost
    cost.update(seconds=time.perf_counter() - t0, tokens=fn.tokens_fed - tok0, sums=sums)
    if not sums:
        return _verdict("normalization", "C2,C5", None, tried, "no position could be measured"), cost
    worst = max(abs(s - 1) for s in sums.values())
    listed = ", ".join(f"{p}: {s:.9f}" for p, s in sums.items())
    return _verdict("normalization", "C2,C5", True, tried, f"sums {{{listed}}}; max |sum - 1| = {worst:.1e}"), cost


NOT_CHECKED = [
    "learning reads (C3) are not visible to a black box: a score that moved after its token changed is the "
    "evidence, and causality looked for it",
    "budgets (C7, C8): artifact and code bytes and 8xH100 time are not measured here (evalkit.score --model does)",
    "scoring order: without (positions, nll, step) events, stream order is assumed (stream-causal, stricter "
    "than score-first); a loop that reorders documents must return steps",
]


# -- command line -----------------------------------------------------------------------
def build_parser(prog: str = "python -m evalkit.audit") -> argparse.ArgumentParser:
    p = CliParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--score-fn", required=True, metavar="FILE.py:NAME",
                   help="NAME(tokens (n,)) -> (n - 1,) NLL in nats of every target (evalkit/audit/blackbox.py)")
    p.add_argument("--val", required=True, help="validation shard glob")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model of the split (vocabulary, bytes)")
    p.add_argument("--limit-docs", type=int, default=8, help="audit the first N documents (default 8)")
    p.add_argument("--doc-tokens", type=int, default=512, help="cut each document to this many tokens")
    p.add_argument("--perturb", type=int, default=3, help="single tokens replaced, one call each (default 3)")
    p.add_argument("--suffix", type=int, default=2, help="suffixes replaced, one call each (default 2)")
    p.add_argument("--norm-positions", type=int, default=3,
                   help="positions whose distribution is measured by substitution (V calls or batches each)")
    p.add_argument("--norm-batch", type=int, default=128, help="candidate streams per vectorised call")
    p.add_argument("--norm-tol", type=float, default=NORM_TOL, help=f"|sum p - 1| allowed (default {NORM_TOL:g})")
    p.add_argument("--atol", type=float, default=0.0, help="nats two scores may differ by and count as equal")
    p.add_argument("--claims-doc-isolation", action="store_true", help="the loop claims rule C10: check it")
    p.add_argument("--json", default=None, help="write the checks, sums and cost to this JSON file")
    return p


def audit_blackbox(fn: ScoreFn, data: EvalData, table: ByteTable, args: argparse.Namespace
                   ) -> tuple[list[CheckResult], dict]:
    base = fn.one(data.tokens)
    checks = [check_coverage(base, data)]
    if base.problem:
        return checks, {}
    det, tol = check_determinism(base, fn.one(data.tokens), args.atol)
    causal, _ = check_causality(fn, data, base, table, args.perturb, args.suffix, tol)
    iso = check_isolation(fn, data, base, table, args.claims_doc_isolation, tol)
    fn.probe_vectorised(data.tokens, tol)
    norm, cost = check_normalization(fn, data, base, table.vocab_size, norm_positions(data, args.norm_positions),
                                     args.norm_tol + 2 * tol, max(tol, TRUNC_TOL), causal.passed is not False)
    return checks + [det, causal, iso, norm], cost


def run(args: argparse.Namespace) -> int:
    for flag, v, lo in (("--limit-docs", args.limit_docs, 1), ("--doc-tokens", args.doc_tokens, 2),
                        ("--perturb", args.perturb, 0), ("--suffix", args.suffix, 0),
                        ("--norm-positions", args.norm_positions, 0), ("--norm-batch", args.norm_batch, 1)):
        if v < lo:
            raise EvalkitError(f"{flag} {v}: must be >= {lo}")
    table = ByteTable.from_sentencepiece(args.tokenizer)
    full = load_data(args.val, args.tokenizer, table.vocab_size, args.limit_docs)
    data = audit_stream(full, len(full.doc_starts), args.doc_tokens)  # the engine audit's short stream
    fn = ScoreFn(load_object(args.score_fn, "--score-fn"), args.score_fn, batch=args.norm_batch)
    t0 = time.perf_counter()
    checks, cost = audit_blackbox(fn, data, table, args)
    seconds = time.perf_counter() - t0
    print(f"black-box audit of {args.score_fn} on {data.n_tokens:,} tokens in {len(data.doc_starts)} documents "
          f"(vocabulary {table.vocab_size:,}), {seconds:.1f} s, {fn.calls:,} calls, {fn.tokens_fed:,} tokens fed")
    rows = [{"check": c.name, "rule": c.rule, "result": c.status, "tried": c.tried, "detail": c.detail}
            for c in checks]
    print(markdown_table(rows, [("check", "check", ""), ("rule", "rule", ""), ("result", "result", ""),
                                ("tried", "what was tried", ""), ("detail", "first offence / numbers", "")]))
    if cost.get("lengths"):
        k = len(cost["lengths"])
        per_call = f"{fn.batch} streams per call" if fn.vectorised else "one stream per call"
        print(f"normalization cost: {k} positions x {table.vocab_size:,} candidates, streams cut at "
              f"{cost['lengths']} tokens: {cost['tokens']:,} tokens fed in {cost['seconds']:.1f} s "
              f"({cost['seconds'] / k:.1f} s per position, {per_call})")
    for note in fn.notes + ["not checked: " + s for s in NOT_CHECKED]:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, {"score_fn": args.score_fn, "seconds": seconds, "calls": fn.calls,
                               "tokens_fed": fn.tokens_fed, "vectorised": fn.vectorised,
                               "checks": [c.as_json() for c in checks],
                               "normalization": {k: v for k, v in cost.items()}, "not_checked": NOT_CHECKED,
                               **provenance(data=data.source, data_sha256=data.sha256)})
    return 1 if any(c.passed is False for c in checks) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run_cli(lambda: run(build_parser().parse_args(argv)))
