"""`python -m evalkit.score ARTIFACT --val GLOB --tokenizer M.model`: exact val_bpb.

One row per (strategy, n-gram mixer) combination; `--json` writes every number with the
config, seed, SHA-256 of artifact and data, package versions and git hash. Runs on one
process, or on many under `torchrun` (windows split over ranks, float64 sums reduced).
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from evalkit.engine.dist import shutdown
from evalkit.engine.loop import evaluate
from evalkit.cli import CliParser, run_cli
from evalkit.flags import add_input_args, add_plugin_arg, prepare
from evalkit.engine.report import markdown_table, provenance, write_json
from evalkit.strategies.registry import build_strategy


def build_parser(prog: str = "python -m evalkit.score") -> argparse.ArgumentParser:
    p = CliParser(prog=prog, description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--strategy", action="append", default=None,
                   help="strategy to run (repeatable; default sliding): flat, sliding, ...")
    add_plugin_arg(p)
    p.add_argument("--json", default=None, help="write the results and provenance to this JSON file")
    return p


def run(args: argparse.Namespace) -> list[dict]:
    info, loaded, data = prepare(args)
    rows, results = [], []
    for name in (args.strategy or ([] if args.plugin else ["sliding"])) + args.plugin:
        for spec in [None] + list(args.ngram):
            torch.manual_seed(args.seed)
            result, _ = evaluate(loaded.model, data, build_strategy(name, args), info, spec,
                                 progress=not args.no_progress)
            rows.append(result.summary())
            results.append(result)
    if info.is_main:
        print(markdown_table(rows))
        for r in rows:
            cov = r["coverage"]
            if cov["unscored"]:
                print(f"note: {r['strategy']} left {cov['unscored']:,} of {cov['targets']:,} targets unscored "
                      "(--drop-tail); this is not a full-split val_bpb")
        if args.json:
            write_json(args.json, {"results": rows, **provenance(
                seed=args.seed, artifact=str(loaded.path), artifact_sha256=loaded.sha256,
                artifact_bytes=loaded.nbytes, data=data.source, data_sha256=data.sha256,
                tokenizer=args.tokenizer, model_config=loaded.config.to_dict(),
                compile_seconds=getattr(args, "compile_seconds", None))})
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> None:
        run(build_parser().parse_args(argv))

    return run_cli(body, cleanup=shutdown)


if __name__ == "__main__":
    sys.exit(main())
