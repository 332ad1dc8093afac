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

from evalkit.dist import init_dist, shutdown
from evalkit.engine import evaluate
from evalkit.cli import CliParser, run_cli
from evalkit.errors import EvalkitError
from evalkit.inputs import load_data, load_model
from evalkit.report import markdown_table, provenance, write_json
from evalkit.strategies import add_common_args, build_strategy, check_window_opts


def build_parser(prog: str = "python -m evalkit.score") -> argparse.ArgumentParser:
    p = CliParser(prog=prog, description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--strategy", action="append", default=None,
                   help="strategy to run (repeatable; default sliding): flat, sliding, ...")
    p.add_argument("--json", default=None, help="write the results and provenance to this JSON file")
    return p


def add_input_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by score, audit and ablate."""
    p.add_argument("artifact", help="evalkit .ptz (or a baseline export with --baseline-config)")
    p.add_argument("--val", required=True, help="validation shard glob, e.g. 'data/fineweb_val_*.bin'")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model the split was tokenized with")
    p.add_argument("--byte-sidecar", default=None, help="per-token byte counts (shard format) overriding the table")
    p.add_argument("--baseline-config", default=None,
                   help="JSON of train_gpt.py environment names: read ARTIFACT as that script's int8 export")
    p.add_argument("--ngram", action="append", default=[],
                   help="n-gram mixer spec, e.g. mix:orders=2-11 or tilt:orders=2-11 (repeatable: one row each)")
    p.add_argument("--share-ngram", action="store_true",
                   help="under torchrun, ranks exchange scored tokens so every cache sees all of them")
    p.add_argument("--limit-docs", type=int, default=None, help="score only the first N documents")
    p.add_argument("--seed", type=int, default=1337, help="seeds torch (TTT adapter init)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_common_args(p)


def prepare(args: argparse.Namespace):
    """(dist info, loaded model, data) with the window options resolved."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.limit_docs is not None and args.limit_docs < 1:
        raise EvalkitError(f"--limit-docs {args.limit_docs}: must be >= 1")
    torch.manual_seed(args.seed)
    info = init_dist(args.device)
    loaded = load_model(args.artifact, info.device, args.baseline_config)
    data = load_data(args.val, args.tokenizer, loaded.config.vocab_size, args.limit_docs, args.byte_sidecar)
    if args.seq_len is None:
        args.seq_len = loaded.config.train_seq_len
    if args.baseline_config and not args.drop_tail:
        logging.getLogger(__name__).info("--baseline-config: flat drops the tail like train_gpt.py's eval_val")
        args.drop_tail = True
    check_window_opts(args)
    return info, loaded, data


def run(args: argparse.Namespace) -> list[dict]:
    info, loaded, data = prepare(args)
    rows, results = [], []
    for name in args.strategy or ["sliding"]:
        for spec in [None] + list(args.ngram):
            torch.manual_seed(args.seed)
            result, _ = evaluate(loaded.model, data, build_strategy(name, args), info, spec,
                                 share_mixer=args.share_ngram, progress=not args.no_progress)
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
                tokenizer=args.tokenizer, model_config=loaded.config.to_dict())})
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> None:
        run(build_parser().parse_args(argv))

    return run_cli(body, cleanup=shutdown)


if __name__ == "__main__":
    sys.exit(main())
