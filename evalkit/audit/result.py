"""What a check returns: a verdict, what was tried, and every trial for `--json`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

PASS, FAIL, NA = "PASS", "FAIL", "n/a"
INCONCLUSIVE = "INCONCLUSIVE"  # the check ran but saw nothing it could judge (e.g. no learning at all)
NONDETERMINISTIC = "NONDETERMINISTIC"  # two identical runs differ: perturbation tests cannot be read there


@dataclass
class CheckResult:
    name: str
    rule: str  # legality.md ids, e.g. "C1,C3"
    status: str  # PASS, FAIL, n/a, INCONCLUSIVE, NONDETERMINISTIC
    tried: str  # what the check did, in one line
    detail: str = ""  # on failure: rule, position (document, offset), what changed, expected vs got
    positions: int = 0  # positions it changed or probed
    docs: int = 0  # documents those positions fall in
    runs: int = 0  # engine runs it used
    seconds: float = 0.0  # wall time of those runs
    trials: list[dict] = field(default_factory=list)  # every perturbation and its outcome (--json)

    @property
    def passed(self) -> bool | None:
        return {PASS: True, FAIL: False}.get(self.status)

    def as_json(self) -> dict:
        return {k: v for k, v in vars(self).items()}


def where(data, p: int) -> str:
    """'position P (document D, offset O)': how a reviewer finds a token."""
    d = int(np.searchsorted(data.doc_starts, p, side="right") - 1)
    d = max(d, 0)
    return f"position {p} (document {d}, offset {p - int(data.doc_starts[d])})"


def locate(data, message: str) -> str:
    """`message` with its first 'position N' written as where(data, N)."""
    m = re.search(r"position (\d+)", message)
    if m is None or not 0 <= int(m.group(1)) < data.n_tokens:
        return message
    return message[:m.start()] + where(data, int(m.group(1))) + message[m.end():]


def docs_of(data, positions) -> int:
    pos = np.asarray(sorted(positions), dtype=np.int64)
    if pos.size == 0:
        return 0
    return int(np.unique(np.searchsorted(data.doc_starts, pos, side="right") - 1).size)
