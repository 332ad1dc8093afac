"""The flags that score, audit and ablate share, and the one place that turns them into
(dist info, loaded model, data): a command written for one runs verbatim on the others."""
from __future__ import annotations

import argparse
import logging

import torch

from evalkit.cli import set_threads
from evalkit.engine.dist import init_dist
from evalkit.engine.inputs import check_tokenizer, load_data, load_model
from evalkit.errors import EvalkitError
from evalkit.strategies.registry import add_common_args, check_window_opts


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
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: free physical cores / local processes, "
                        "1 when the CPU is already busy; the choice is printed)")
    p.add_argument("--allow-tokenizer-mismatch", action="store_true",
                   help="score even when --tokenizer differs from the one the artifact or shards record")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_common_args(p)


def prepare(args: argparse.Namespace):
    """(dist info, loaded model, data) with the window options resolved."""
    set_threads(args.threads)
    if args.limit_docs is not None and args.limit_docs < 1:
        raise EvalkitError(f"--limit-docs {args.limit_docs}: must be >= 1")
    torch.manual_seed(args.seed)
    info = init_dist(args.device)
    loaded = load_model(args.artifact, info.device, args.baseline_config)
    data = load_data(args.val, args.tokenizer, loaded.config.vocab_size, args.limit_docs, args.byte_sidecar)
    check_tokenizer(args.tokenizer, args.val, loaded, args.allow_tokenizer_mismatch)
    if args.seq_len is None:
        args.seq_len = loaded.config.train_seq_len
    if args.baseline_config and not args.drop_tail:
        logging.getLogger(__name__).info("--baseline-config: flat drops the tail like train_gpt.py's eval_val")
        args.drop_tail = True
    check_window_opts(args)
    return info, loaded, data
