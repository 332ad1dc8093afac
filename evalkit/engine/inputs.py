"""Turn command-line inputs into a model and the split, checking that they agree.

Shared by score, audit and ablate: the artifact (evalkit .ptz or a baseline export), the
validation glob, the tokenizer (its byte table) and an optional byte sidecar.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from evalkit.model.artifact import TOKENIZER_META, load_artifact
from evalkit.model.baseline import load_baseline
from evalkit.data.tokenizer import file_sha256, recorded_tokenizer
from evalkit.data.shards import ByteTable, check_token_range, doc_starts, load_stream, read_byte_sidecar
from evalkit.engine.context import EvalData
from evalkit.errors import EvalkitError
from evalkit.model.gpt import GPT, GPTConfig


@dataclass
class LoadedModel:
    model: GPT
    config: GPTConfig
    path: Path
    sha256: str
    nbytes: int
    meta: dict | None = None  # the artifact header's meta; None for a baseline export (it has none)


def load_model(path: str, device: torch.device, baseline_config: str | None = None) -> LoadedModel:
    if baseline_config:
        cfg, state, blob = load_baseline(path, baseline_config)
        sha, nbytes, meta = hashlib.sha256(blob).hexdigest(), len(blob), None
    else:
        art = load_artifact(path)
        cfg, state, sha, nbytes = art.config, art.state_dict, art.sha256, art.nbytes
        meta = art.header.get("meta") or {}
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EvalkitError(f"{path}: tensors do not match the model config (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}); was it written by another evalkit version?")
    return LoadedModel(model.to(device).float().eval(), cfg, Path(path), sha, nbytes, meta)


def load_data(val: str, tokenizer: str, vocab_size: int, limit_docs: int | None = None,
              byte_sidecar: str | None = None) -> EvalData:
    if not Path(tokenizer).is_file():
        raise EvalkitError(f"--tokenizer {tokenizer}: file not found; pass the SentencePiece .model of the split")
    table = ByteTable.from_sentencepiece(tokenizer, allow_split_space=byte_sidecar is not None)
    if table.vocab_size != vocab_size:
        raise EvalkitError(f"--tokenizer {tokenizer} has vocab {table.vocab_size} but the artifact's model has "
                           f"{vocab_size}; pass the tokenizer the model was trained with")
    tokens = load_stream(val, limit_docs=limit_docs)
    if tokens.size < 2:
        raise EvalkitError(f"--val {val}: the split has {tokens.size} tokens; need at least 2")
    check_token_range(tokens, vocab_size, val)
    if byte_sidecar:
        full_size = load_stream(val).size if limit_docs else tokens.size  # the sidecar covers the whole split
        target_bytes = read_byte_sidecar(byte_sidecar, full_size)[:tokens.size].astype("int64")
        target_bytes[0] = 0
    else:
        target_bytes = table.target_bytes(tokens)
    return EvalData(tokens, target_bytes, doc_starts(tokens), source=val)


_WARNED: set[str] = set()  # artifacts already warned about, so ablate's many runs warn once


def check_tokenizer(tokenizer: str, val: str, loaded: LoadedModel, allow_mismatch: bool = False) -> None:
    """--tokenizer must be the file the artifact was trained with and the shards were
    written with, when they record it (by SHA-256): a same-size vocabulary from another
    tokenizer would count other bytes and give a wrong val_bpb without any other error."""
    sha = file_sha256(tokenizer)
    claims = []  # (who, what they record)
    if loaded.meta is not None:
        if loaded.meta.get(TOKENIZER_META):
            claims.append((str(loaded.path), loaded.meta.get("tokenizer", "?"), loaded.meta[TOKENIZER_META]))
        elif str(loaded.path) not in _WARNED:
            _WARNED.add(str(loaded.path))
            print(f"warning: {loaded.path} records no tokenizer (exported before evalkit recorded one): cannot "
                  f"check --tokenizer {tokenizer}; re-export it to record it")  # stdout: stderr is for the error
    rec = recorded_tokenizer(val)
    if rec is not None:
        claims.append((str(rec[0]), rec[1].get("tokenizer", "?"), rec[1]["tokenizer_sha256"]))
    for who, name, want in claims:
        if want == sha:
            continue
        msg = (f"--tokenizer {tokenizer} (sha256 {sha[:12]}) is not the tokenizer {who} records ({name}, sha256 "
               f"{want[:12]})")
        if not allow_mismatch:
            raise EvalkitError(f"{msg}; pass that tokenizer, or --allow-tokenizer-mismatch to score anyway")
        print(f"warning: {msg}; scoring anyway (--allow-tokenizer-mismatch): bytes may be miscounted")
