"""Rule C8: artifact + counted code <= 16,000,000 bytes, and projected 8xH100 eval time
<= 600 s, from the one cost function (evalkit.engine.cost.projected_8xh100_seconds).

Counted code is every repository source file the evaluation executed (traced during the
base run) plus the artifact and shard loaders and the plugin file. Passes are the larger
of the strategy's config (TTT chunks, steps and phases from the real document lengths of
the loaded split) and what the FLOP hook measured on the audited stream; mixer time is
measured and scaled to the full split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalkit.audit.result import FAIL, PASS, CheckResult
from evalkit.audit.subject import Run, counted_files
from evalkit.engine.cost import DEFAULT_UTILIZATION, EVAL_LIMIT_S, H100_BF16_FLOPS, RANKS, projected_8xh100_seconds
from evalkit.model.artifact import SIZE_CAP


@dataclass
class Budget:
    artifact_bytes: int
    code_files: list[Path]
    seconds: float  # projected 8xH100 eval seconds for the full split
    split_tokens: int
    passes: tuple[float, float]  # measured (forward, train) forward-equivalents per scored token
    mixer_seconds: float

    @property
    def code_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.code_files)


def budget_of(base: Run, cfg, strategy_config: dict, artifact_bytes: int, split_tokens: int,
              doc_lengths: np.ndarray | None, plugin_files: list[str]) -> Budget:
    scored = max(int((base.ledger.score_event >= 0).sum()), 1)
    passes = (base.forward_tokens / scored, 3.0 * base.train_tokens / scored)
    seconds = projected_8xh100_seconds(cfg, strategy_config, scored, base.mixer_seconds, split_tokens=split_tokens,
                                       doc_tokens=doc_lengths, passes=passes)
    files = sorted(set(counted_files(base)) | {Path(f).resolve() for f in plugin_files})
    return Budget(artifact_bytes, files, seconds, split_tokens, passes, base.mixer_seconds)


def check_budget(b: Budget) -> CheckResult:
    total = b.artifact_bytes + b.code_bytes
    tried = (f"artifact {b.artifact_bytes:,} + code {b.code_bytes:,} ({len(b.code_files)} files the evaluation ran) = "
             f"{total:,} B (cap {SIZE_CAP:,}); {b.passes[0]:.2f} forward + {b.passes[1]:.2f} training passes a token, "
             f"{b.split_tokens:,}-token split on {RANKS}xH100 at {DEFAULT_UTILIZATION:.0%} of "
             f"{H100_BF16_FLOPS / 1e12:.0f} TFLOP/s + mixer {b.mixer_seconds:.2f} s measured, scaled: "
             f"{b.seconds:.1f} s (limit {EVAL_LIMIT_S:.0f} s)")
    res = CheckResult("budget", "C8", PASS, tried, runs=1)
    res.trials = [{"code_files": [str(f) for f in b.code_files], "code_bytes": b.code_bytes,
                   "artifact_bytes": b.artifact_bytes, "projected_s": b.seconds}]
    if total > SIZE_CAP:
        res.status, res.detail = FAIL, f"C8 size: {total:,} bytes > {SIZE_CAP:,} by {total - SIZE_CAP:,}"
    elif not math.isfinite(b.seconds) or b.seconds > EVAL_LIMIT_S:
        res.status, res.detail = FAIL, f"C8 time: projected {b.seconds:.0f} s > {EVAL_LIMIT_S:.0f} s"
    else:
        res.detail = f"{total:,} B, {b.seconds:.1f} s projected"
    return res
