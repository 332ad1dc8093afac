"""The flags that score, audit and ablate share, and the one place that turns them into
(dist info, loaded model, data): a command written for one runs verbatim on the others."""
from __future__ import annotations

import argparse
import contextlib
import logging

import torch

from evalkit.cli import set_threads
from evalkit.engine.dist import init_dist
from evalkit.engine.inputs import check_tokenizer, load_data, load_model, load_user_model
from evalkit.errors import EvalkitError
from evalkit.model.gpt import GPT, GPTConfig
from evalkit.strategies.registry import DEFAULT_BATCH_WINDOWS, add_common_args, check_window_opts


def add_input_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by score, audit and ablate."""
    p.add_argument("artifact", help="evalkit .ptz (or a baseline export with --baseline-config, or what --model reads)")
    p.add_argument("--val", required=True, help="validation shard glob, e.g. 'data/fineweb_val_*.bin'")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model the split was tokenized with")
    p.add_argument("--byte-sidecar", default=None, help="per-token byte counts (shard format) overriding the table")
    p.add_argument("--baseline-config", default=None,
                   help="JSON of train_gpt.py environment names: read ARTIFACT as that script's int8 export")
    p.add_argument("--model", default=None, metavar="FILE.py:NAME",
                   help="your own model: NAME(artifact_path, device) -> torch.nn.Module mapping (B, T) int64 ids "
                        "to (B, T, V) logits (contract: evalkit/model/user.py)")
    p.add_argument("--ngram", action="append", default=[],
                   help="n-gram mixer spec, e.g. mix:orders=2-11 or tilt:orders=2-11 (repeatable: one row each)")
    p.add_argument("--share-ngram", action="store_true", help=argparse.SUPPRESS)  # removed: see prepare()
    p.add_argument("--limit-docs", type=int, default=None, help="score only the first N documents")
    p.add_argument("--seed", type=int, default=1337, help="seeds torch (TTT adapter init)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: free physical cores / local processes, "
                        "1 when the CPU is already busy; the choice is printed)")
    p.add_argument("--allow-tokenizer-mismatch", action="store_true",
                   help="score even when --tokenizer differs from the one the artifact or shards record")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (for CUDA); compiled and warmed up on random tokens before "
                        "any timing, its seconds reported apart")
    add_common_args(p)


def add_plugin_arg(p: argparse.ArgumentParser) -> None:
    """--plugin on score and ablate (the audit takes exactly one, with its own flag)."""
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py:CLASS",
                   help="a user strategy (protocol: evalkit/strategies/plugins.py), run like a --strategy; "
                        "repeatable")


def prepare(args: argparse.Namespace):
    """(dist info, loaded model, data) with the window options resolved."""
    if args.share_ngram:
        raise EvalkitError("--share-ngram: removed; every rank's n-gram cache now learns all scored positions in "
                           "plan order, so scores no longer depend on the process count: drop the flag")
    set_threads(args.threads, defer=True)  # said when evaluation starts: bad input stays one line
    if args.limit_docs is not None and args.limit_docs < 1:
        raise EvalkitError(f"--limit-docs {args.limit_docs}: must be >= 1")
    torch.manual_seed(args.seed)
    info = init_dist(args.device)
    if args.model:
        if args.baseline_config:
            raise EvalkitError("--model with --baseline-config: give one way to read the artifact")
        from evalkit.strategies.plugins import file_sha256, load_object, plugin_file

        factory = load_object(args.model, "--model")
        loaded = load_user_model(factory, args.artifact, info.device, args.model, args.seq_len,
                                 code=(plugin_file(args.model, "--model"), file_sha256(args.model, "--model")))
        logging.getLogger(__name__).info(loaded.describe())
    else:
        loaded = load_model(args.artifact, info.device, args.baseline_config)
    data = load_data(args.val, args.tokenizer, loaded.config.vocab_size, args.limit_docs, args.byte_sidecar)
    if args.seq_len is None:
        args.seq_len = loaded.config.train_seq_len
    if args.baseline_config and not args.drop_tail:
        logging.getLogger(__name__).info("--baseline-config: flat drops the tail like train_gpt.py's eval_val")
        args.drop_tail = True
    if args.batch_windows is None:
        args.batch_windows = default_batch_windows(loaded.config, args.seq_len, info.device)
    check_window_opts(args)
    check_tokenizer(args.tokenizer, args.val, loaded, args.allow_tokenizer_mismatch)  # last: it may warn
    args.compile_seconds = None
    if args.compile:
        args.compile_seconds = compile_model(loaded.model, args.seq_len, args.batch_windows, info.device)
        logging.getLogger(__name__).info("--compile: %.1f s (warm-up on random tokens, not in any timing)",
                                         args.compile_seconds)
    return info, loaded, data


MAX_BATCH_WINDOWS = 512


def window_bytes(cfg: GPTConfig, seq_len: int, flash: bool) -> int:
    """Peak device bytes one window adds to a scoring call (inference, bf16 activations):
    ~16 live (T, d) tensors, the MLP's hidden, every row's fp32 logits + log-softmax +
    entropy product (flat and a sliding run's first window score every row) plus the rows
    of the batches still being scored on the host (evalkit.engine.overlap.DEPTH), and SDPA's
    (H, T, T) scores when flash-attn is absent. An estimate with headroom, not a measurement."""
    from evalkit.engine.overlap import DEPTH

    T = seq_len
    per_token = 16 * cfg.model_dim * 2 + 2 * cfg.mlp_hidden * 2 + (3 + DEPTH) * cfg.vocab_size * 4
    attn = 0 if flash else cfg.num_heads * T * T * 2
    return T * per_token + attn


def default_batch_windows(cfg: GPTConfig, seq_len: int, device: torch.device) -> int:
    """16 on CPU; on CUDA as many windows as fit in half the free device memory (the rest
    stays for the allocator's fragmentation, an n-gram mixer's probe rows and NCCL), 1..512."""
    if device.type != "cuda":
        return DEFAULT_BATCH_WINDOWS
    from evalkit.model.gpt import flash_attn_func

    free, _total = torch.cuda.mem_get_info(device)
    fit = int(0.5 * free) // window_bytes(cfg, seq_len, flash_attn_func is not None)
    return max(1, min(MAX_BATCH_WINDOWS, fit))


def compile_model(model: GPT, seq_len: int, batch_windows: int, device: torch.device,
                  backend: str = "inductor") -> float:
    """torch.compile the model's trunk in place and warm it up on random tokens (the only
    legal warm-up input) at the full batch shape; returns the seconds, synchronized, so
    that callers report compile time apart from scoring time."""
    import time

    t0 = time.perf_counter()
    model.hidden = torch.compile(model.hidden, backend=backend, dynamic=None)  # the head runs on varying rows
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (batch_windows, seq_len), generator=g).to(device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        model.log_probs(ids, torch.arange(seq_len, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
