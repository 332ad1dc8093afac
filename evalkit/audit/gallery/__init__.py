"""A gallery of ILLEGAL strategies, each rebuilt from a public case in docs legality.md.

They ship with the package so `python -m evalkit.audit --self-test` can show that each one
FAILS the check named for it. Every file is an ordinary plugin
(`--plugin evalkit/audit/gallery/FILE.py:CLASS`); none of them is registered, so none can be
picked with `--strategy`. Never use them to score.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GalleryEntry:
    file: str  # in this folder
    cls: str
    check: str  # the audit check that must FAIL
    case: str  # the public case it reproduces

    @property
    def spec(self) -> str:
        return f"{Path(__file__).parent / self.file}:{self.cls}"


GALLERY = [
    GalleryEntry("hashed_ratio.py", "HashedRatio", "normalization",
                 "hashed n-gram count ratios (PR #886, #1147, #978)"),
    GalleryEntry("target_backoff.py", "TargetKeyedBackoff", "target independence",
                 "backoff to the highest order where count(ctx, x_t) > 0"),
    GalleryEntry("min_nll.py", "MinNllTwoPasses", "ledger", "min-NLL over passes (PR #568, #573)"),
    GalleryEntry("ttt_peek.py", "TrainThenScore", "causality", "pre-eval TTT (issue #402, PR #1376)"),
    GalleryEntry("target_gate.py", "TargetLengthGate", "target independence", "gate on a target property (PR #1420)"),
    GalleryEntry("val_warmup.py", "ValidationWarmup", "causality", "compile warm-up on val tokens (PR #1530)"),
    GalleryEntry("smear_leak.py", "LeakySmear", "doc isolation", "SmearGate across BOS (#1855 record)"),
]
