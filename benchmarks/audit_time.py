"""Time `python -m evalkit.audit`: the self-test matrix and a full audit of one strategy.

    .venv/bin/python benchmarks/audit_time.py [ARTIFACT VAL_GLOB TOKENIZER] [--strategy ttt]

Without an artifact it audits the self-test's tiny model only. Target: each run under
120 s on 2 shared CPU cores (issue 6). Exits 1 if a run is over.
"""
from __future__ import annotations

import subprocess
import sys
import time

LIMIT_S = 120.0


def timed(argv: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "evalkit.audit", *argv], stdout=subprocess.DEVNULL).returncode
    return time.perf_counter() - t0, rc


def main(argv: list[str]) -> int:
    runs = [("self-test (17 strategies, tiny model)", ["--self-test"])]
    if len(argv) >= 3:
        art, val, tok, *rest = argv
        runs.append((f"audit {' '.join(rest) or '--strategy sliding'}",
                     [art, "--val", val, "--tokenizer", tok, "--threads", "1", "--no-progress", *rest]))
    over = False
    for name, args in runs:
        seconds, rc = timed(args)
        over |= seconds > LIMIT_S
        print(f"{name}: {seconds:.1f} s wall (exit {rc}; limit {LIMIT_S:.0f} s)")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
