"""Where the audit perturbs: every place a strategy's behaviour can change.

Targets are chosen from the base run's ledger (what was scored in which call) and, when the
strategy has a window plan, from its windows: inside the first and the last window, the
first and last scored target of windows at every stride phase seen, the first and last
chunk (a contiguous stretch scored in one call: a TTT chunk) of the first, a middle and the
last document, and seeded random positions. Whole-document replacements (first, middle,
last) and the suffix tests (second half of every document; last third of the split) are
built here too. Replaced tokens are never a BOS, so document boundaries stay put.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.data.shards import ByteTable, doc_starts
from evalkit.data.tokenizer import BOS_ID
from evalkit.engine.context import EvalData
from evalkit.engine.ledger import Ledger
from evalkit.errors import EvalkitError


@dataclass
class Target:
    position: int
    why: str  # which coverage rule chose it (reported)


def stretches(ledger: Ledger) -> list[tuple[int, int, int]]:
    """(event, first, last) of each maximal run of consecutive positions scored in one call,
    in scoring order: a window's new targets, a TTT chunk, a whole document..."""
    ev = ledger.score_event
    pos = np.flatnonzero(ev >= 0)
    if pos.size == 0:
        return []
    order = np.lexsort((pos, ev[pos]))
    p, e = pos[order], ev[pos][order]
    cut = np.flatnonzero((np.diff(p) != 1) | (np.diff(e) != 0)) + 1
    starts, ends = np.r_[0, cut], np.r_[cut, p.size] - 1
    return [(int(e[a]), int(p[a]), int(p[b])) for a, b in zip(starts, ends)]


def window_bounds(strategy, data: EvalData) -> list[tuple[int, int]]:
    """(first, last) scored target of each window of a strategy's plan, if it has one."""
    plan = getattr(strategy, "plan", None)
    if not callable(plan):
        return []
    try:
        return [(w.score_from, w.end - 1) for w in plan(data) if w.end > w.score_from]
    except Exception:  # a plugin's plan may need more than the data; the ledger's stretches remain
        return []


def _replaceable(data: EvalData) -> np.ndarray:
    ok = data.tokens != BOS_ID
    ok[0] = False
    return ok


def choose_targets(data: EvalData, ledger: Ledger, windows: list[tuple[int, int]], stride: int,
                   effort: int, seed: int) -> list[Target]:
    """Single-position perturbations, deduplicated, in stream order."""
    ok = _replaceable(data)
    chosen: dict[int, str] = {}

    def add(p: int, why: str) -> None:
        p = int(p)
        for q in (p, p + 1, p - 1, p + 2, p - 2):  # nearest replaceable position
            if 0 < q < data.n_tokens and ok[q]:
                chosen.setdefault(q, why)
                return

    st = stretches(ledger)
    if not st:
        return []
    bounds = windows or [(a, b) for _, a, b in st]
    bounds_in_stream = sorted(bounds)
    first, last = bounds_in_stream[0], bounds_in_stream[-1]
    for p in (first[0] + 1, (first[0] + first[1]) // 2, first[1]):
        add(p, "inside the first window")
    for p in (last[0], (last[0] + last[1]) // 2, last[1] - 1):
        add(p, "inside the last window")
    _, a, b = st[0]
    add((a + b) // 2, "inside the first scored stretch")
    _, a, b = st[-1]
    add((a + b) // 2, "inside the last scored stretch")
    _phases(bounds_in_stream, stride, 4 * effort, add)
    _doc_chunks(data, st, add)
    rng = np.random.default_rng(seed)
    for p in rng.choice(np.flatnonzero(ok), size=min(6 * effort, int(ok.sum())), replace=False):
        add(int(p), f"random (seed {seed})")
    return _interleave([Target(p, chosen[p]) for p in sorted(chosen)])


def _interleave(targets: list[Target]) -> list[Target]:
    """Round robin over coverage classes (first/last window, phases, chunks, random), so
    a time budget that cuts the tail still leaves every class tried."""
    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.why.split(" (")[0].split(" of document")[0], []).append(t)
    out: list[Target] = []
    queues = list(groups.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def _phases(bounds: list[tuple[int, int]], stride: int, k: int, add) -> None:
    """First and last targets of windows, one window per distinct stride phase of each
    (up to k phases, spread over the stream)."""
    stride = max(int(stride), 1)
    for end, label in ((0, "first"), (1, "last")):
        by_phase: dict[int, list[int]] = {}
        for w in bounds:
            by_phase.setdefault(w[end] % stride, []).append(w[end])
        phases = sorted(by_phase)
        pick = [phases[i] for i in np.linspace(0, len(phases) - 1, min(k, len(phases))).round().astype(int)]
        for j, ph in enumerate(dict.fromkeys(pick)):
            cands = by_phase[ph]
            add(cands[(j * 7919 + len(cands) // 2) % len(cands)], f"{label} scored target of a window (phase {ph})")


def _doc_chunks(data: EvalData, st: list[tuple[int, int, int]], add) -> None:
    """First/last target of the first and last stretch (chunk) of the first, a middle and
    the last document."""
    n_docs = len(data.doc_starts)
    ends = np.append(data.doc_starts[1:], data.n_tokens)
    for k in sorted({0, n_docs // 2, n_docs - 1}):
        lo, hi = int(data.doc_starts[k]) + 1, int(ends[k]) - 1
        mine = [(a, b) for _, a, b in st if lo <= a <= hi]
        if not mine:
            continue
        mine.sort()
        add(mine[0][0], f"first chunk of document {k}")
        add(mine[0][1], f"first chunk of document {k}")
        add(mine[-1][0], f"last chunk of document {k}")
        add(mine[-1][1], f"last chunk of document {k}")


def _bigram_hit(tokens: np.ndarray, t: int, a: int) -> bool:
    prev = tokens[:t - 1] == tokens[t - 1]
    return bool(np.any(tokens[1:t][prev] == a))


def perturb_positions(data: EvalData, k: int, first_window: int) -> list[int]:
    """For a black box (no ledger, no window plan: evalkit/audit/blackbox.py). k targets
    to replace: one inside the first window (catches warm-ups and peeks at the start), the
    rest spread over the stream, each moved to the nearest position whose
    bigram already occurred in the prefix (a cache hit, where target-keyed tricks act)."""
    tokens, n = data.tokens, data.n_tokens
    ok = np.ones(n, bool)
    ok[0] = False
    ok[tokens == BOS_ID] = False  # never replace a BOS: document boundaries stay put
    ok[np.maximum(data.doc_starts + 1, 0).clip(max=n - 1)] = False  # the first target has no prefix
    want = [min(max(2, first_window // 2), n - 1)] + [int(n * (i + 1) / (k + 1)) for i in range(k - 1)]
    chosen: list[int] = []
    for w in want:
        order = np.argsort(np.abs(np.arange(n) - w), kind="stable")
        cands = [int(p) for p in order[:512] if ok[p] and p not in chosen]
        hits = [p for p in cands[:256] if _bigram_hit(tokens, p, int(tokens[p]))]
        if hits or cands:
            chosen.append((hits or cands)[0])
    return sorted(chosen)


def replacement(tokens: np.ndarray, t: int, vocab: int, table: ByteTable | None) -> int:
    """A token that differs from x_t as much as we can tell: the opposite bigram-cache
    status (a miss for a hit, a seen follower for a miss) and a byte length on the other
    side of the median, so gates keyed on the target's cache hit or length flip."""
    x, prev = int(tokens[t]), tokens[:t - 1] == tokens[t - 1]
    followers = np.unique(tokens[1:t][prev].astype(np.int64))
    is_hit = np.zeros(vocab, bool)
    is_hit[followers] = True
    usable = np.ones(vocab, bool)  # never a BOS, never x itself, never a boundary token
    usable[[x, BOS_ID]] = False
    if table is not None:
        usable &= ~table.is_boundary
    cand = (~is_hit if is_hit[x] else is_hit) & usable
    if not cand.any():  # no follower seen yet: any usable token
        cand = usable
    ids = np.flatnonzero(cand)
    if table is None:  # no byte table: the first candidate half the alphabet away
        return int(ids[np.argmin((ids - x - vocab // 2) % vocab)])
    # bytes charged after x_{t-1}; jump to the far side of the median so thresholds flip
    charged = table.base_bytes.astype(np.int64) + (table.leading_space & ~table.is_boundary[int(tokens[t - 1])])
    median = float(np.median(charged[~table.is_boundary]))
    return int(ids[np.argmin(charged[ids])] if charged[x] >= median else ids[np.argmax(charged[ids])])


def replace_many(data: EvalData, positions: np.ndarray, vocab: int, table: ByteTable | None) -> np.ndarray:
    """Replacement tokens for a block of positions: each shifted half the usable alphabet."""
    allowed = np.flatnonzero(~table.is_boundary) if table is not None else np.arange(vocab)
    allowed = allowed[allowed != BOS_ID]
    x = data.tokens[positions].astype(np.int64)
    new = allowed[(np.searchsorted(allowed, x) + allowed.size // 2) % allowed.size]
    return np.where(new == x, allowed[(np.searchsorted(allowed, x) + 1) % allowed.size], new)


def perturbed(data: EvalData, positions: np.ndarray, new: np.ndarray, table: ByteTable | None) -> EvalData:
    """A copy of `data` with tokens replaced (never a BOS); bytes recomputed when we can.
    It keeps the original's source name: nothing says it is a copy."""
    tokens = data.tokens.copy()
    tokens[positions] = new
    target_bytes = table.target_bytes(tokens) if table is not None else data.target_bytes
    return EvalData(tokens, target_bytes, data.doc_starts.copy(), source=data.source)


def document_body(data: EvalData, k: int) -> np.ndarray:
    """Positions of document k's tokens after its BOS, up to (not including) the next BOS."""
    s = int(data.doc_starts[k])
    e = int(data.doc_starts[k + 1]) if k + 1 < len(data.doc_starts) else data.n_tokens
    return np.arange(s + 1, e, dtype=np.int64)


def random_tokens(data: EvalData, n: int, vocab: int, table: ByteTable | None, seed: int) -> np.ndarray:
    """n seeded random non-boundary, non-BOS tokens."""
    allowed = np.flatnonzero(~table.is_boundary) if table is not None else np.arange(vocab)
    allowed = allowed[allowed != BOS_ID]
    return np.random.default_rng(seed).choice(allowed, size=n)


def suffix_sets(data: EvalData, vocab: int, table: ByteTable | None, effort: int = 1,
                seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(what, positions, new tokens) of the suffix tests: the second half of every document
    and the last third of the split, by seeded random tokens; and the second half of single
    documents (a middle one, the last, seeded others), alternately by random tokens and by
    a copy of the document's first half. With shared state only the first changed
    document's earlier half is judged in the every-document run, so each single-document
    run judges one more; a random half makes a document harder and a copied half easier,
    so a choice made per document between passes flips one way or the other."""
    ok = _replaceable(data)
    halves = []
    for k in range(len(data.doc_starts)):
        body = document_body(data, k)
        halves.append(body[body.size // 2:])
    half = np.concatenate(halves) if halves else np.zeros(0, np.int64)
    half = half[ok[half]]
    tail = np.arange(data.n_tokens * 2 // 3, data.n_tokens, dtype=np.int64)
    tail = tail[ok[tail]]
    out = [("the second half of every document (random tokens)", half,
            random_tokens(data, half.size, vocab, table, seed)),
           ("the last third of the split (random tokens)", tail,
            random_tokens(data, tail.size, vocab, table, seed + 1))]
    n = len(halves)
    rng = np.random.default_rng(seed)
    extra = rng.choice(n, size=min(n, 3 * effort), replace=False).tolist() if n else []
    for j, k in enumerate(dict.fromkeys([n // 2, n - 1, *extra])):
        pos = halves[k] if 0 < k < n else np.zeros(0, np.int64)
        if pos.size == 0:
            continue
        if j % 2 == 0:
            body = document_body(data, k)
            out.append((f"the second half of document {k} (a copy of its first half)", pos,
                        data.tokens[body[:pos.size]].astype(np.int64)))
        else:
            out.append((f"the second half of document {k} (random tokens)", pos,
                        random_tokens(data, pos.size, vocab, table, seed + 2 + k)))
    return out


def audit_stream(data: EvalData, docs: int, doc_tokens: int) -> EvalData:
    """The first `docs` documents of `data`, each cut to its first `doc_tokens` tokens: many
    documents in few tokens, so re-runs stay cheap and isolation has neighbours. Keeps the
    original's source name (a strategy must not tell the audit from a real run)."""
    if doc_tokens < 2:
        raise EvalkitError(f"--doc-tokens {doc_tokens}: must be >= 2")
    ends = np.append(data.doc_starts[1:], data.n_tokens)
    keep = np.concatenate([np.arange(s, min(e, s + doc_tokens))
                           for s, e in list(zip(data.doc_starts, ends))[:max(docs, 1)]])
    tokens = data.tokens[keep]
    target_bytes = data.target_bytes[keep].copy()  # a cut keeps each position's predecessor except at a BOS
    target_bytes[0] = 0
    return EvalData(tokens, target_bytes, doc_starts(tokens), source=data.source)
