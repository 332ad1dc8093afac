"""A gallery of strategies the audit must judge right: ILLEGAL ones, each rebuilt from a
public case in docs legality.md or from a way to dodge a sparse audit, and LEGAL ones
written to trip a careless audit (legal.py).

They ship with the package so `python -m evalkit.audit --self-test` can show that each
illegal one FAILS the check named for it and each legal one passes everything. Every file
is an ordinary plugin (`--plugin evalkit/audit/gallery/FILE.py:CLASS`); none is registered,
so none can be picked with `--strategy`. Never use the illegal ones to score.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GalleryEntry:
    file: str  # in this folder
    cls: str
    check: str | None  # the audit check that must FAIL; None: legal, every check must pass
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
    GalleryEntry("window_end_leak.py", "WindowEndLeak", "target independence", "a leak at each window's last target"),
    GalleryEntry("warmups.py", "FirstWindowWarmup", "causality", "warm-up step on the first window"),
    GalleryEntry("warmups.py", "TailWarmup", "causality", "warm-up step on the split's last tokens"),
    GalleryEntry("best_of_two.py", "PerDocBestOfTwo", "suffix", "per-document best of two passes"),
    GalleryEntry("best_of_two.py", "PerPositionBestOfTwo", "target independence", "per-position best of two"),
    GalleryEntry("audit_aware.py", "AuditAware", "target independence", "honest only when it sees the audit"),
    GalleryEntry("hashed_ratio.py", "HashedRatioBigBatch", "normalization",
                 "hashed ratio updated every 256 windows (the disqualified author's batch)"),
    GalleryEntry("batch_weight.py", "BatchNormalizedWeight", "causality", "a mixing weight normalized over the batch"),
    GalleryEntry("cross_doc_cache.py", "CrossDocCacheTTT", "suffix",
                 "TTT with a cache context across a BOS (found by this audit)"),
    GalleryEntry("legal.py", "ReorderedCall", None, "legal: one call's positions in another order"),
    GalleryEntry("legal.py", "DynamicDocOrder", None, "legal: documents claimed in a fresh random order"),
    GalleryEntry("legal.py", "NegativeTilt", None, "legal: entropy-driven tilt with negative strengths"),
]
