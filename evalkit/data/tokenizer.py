"""SentencePiece tokenizers: load one safely, train one like the challenge's, encode documents.

Training mirrors the challenge's fineweb_1024_bpe.model (BPE, nmt_nfkc, no dummy prefix,
split digits, byte fallback, BOS = 1) and is deterministic, so the same documents give a
byte-identical model file wherever it is written.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from evalkit.errors import EvalkitError

BOS_ID = 1  # the challenge tokenizers' BOS, which starts every document
SPACE_PIECE = "\u2581"  # sentencepiece's '▁', the marker for a preceding space


def load_sentencepiece(model_path: str | Path):
    """The SentencePiece processor of `model_path`; bad paths and files are bad input."""
    import sentencepiece as spm

    path = Path(model_path)
    if not path.is_file():
        raise EvalkitError(f"tokenizer {path}: no such file; pass a sentencepiece .model")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvalkitError(f"tokenizer {path}: not a sentencepiece model ({first})") from None


def tokenize_documents(docs: Iterable[str], model_path: str | Path, bos_id: int = BOS_ID) -> np.ndarray:
    """BOS before each document, then its sentencepiece ids; one uint16 stream."""
    sp = load_sentencepiece(model_path)
    if sp.vocab_size() > 65536:
        raise EvalkitError(f"tokenizer {model_path}: vocab {sp.vocab_size()} does not fit uint16 shards")
    parts = [np.array([bos_id] + ids, np.uint16) for ids in sp.encode(list(docs), out_type=int)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def train_tokenizer(docs: list[str], vocab_size: int, out_prefix: Path) -> Path:
    """Train a BPE tokenizer with the challenge's settings; returns OUT_PREFIX.model.

    Settings mirror fineweb_1024_bpe.model's trainer/normalizer spec: BPE, nmt_nfkc, no
    dummy prefix, split digits, byte fallback, character coverage 0.999, ids pad 0,
    BOS 1, EOS 2, UNK 3. Documents are fed line by line because sentencepiece silently
    skips "sentences" longer than max_sentence_length.
    """
    import sentencepiece as spm

    if vocab_size < 260 + 8:
        raise EvalkitError(f"--train-tokenizer {vocab_size}: too small; byte fallback alone needs 260 ids")
    lines = [ln for doc in docs for ln in doc.split("\n") if ln.strip()]
    if not lines:
        raise EvalkitError("--train-tokenizer: the training documents hold no text")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(1234)  # makes the input_sentence_size sample repeatable
    # model_writer instead of model_prefix: the prefix path would be stored in the model,
    # and the same documents must give a byte-identical file wherever it is written.
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=0.999,
            byte_fallback=True,
            split_digits=True,
            add_dummy_prefix=False,
            normalization_rule_name="nmt_nfkc",
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            hard_vocab_limit=False,
            num_threads=1,  # one core, and thread scheduling must not change the merges
            input_sentence_size=200_000,
            shuffle_input_sentence=True,
            max_sentence_length=16384,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise EvalkitError(f"--train-tokenizer {vocab_size}: sentencepiece failed: {e}") from None
    model = out_prefix.with_name(out_prefix.name + ".model")
    model.write_bytes(buf.getvalue())
    sp = load_sentencepiece(model)
    if sp.piece_to_id(SPACE_PIECE) == sp.unk_id():
        raise EvalkitError(f"--train-tokenizer: trained {model} lacks '▁' as a piece; give more text")
    return model


# ---------------------------------------------------------------- identity
# Two tokenizers with the same vocab size give shards and byte counts that look valid
# together and a wrong val_bpb; so a tokenizer is identified by the SHA-256 of its file,
# recorded beside the shards (by `data prepare`) and in the artifact (by the trainer).
RECORD_SUFFIX = "_tokenizer.json"
_SHARD_NAME = re.compile(r"^(?P<name>.+)_(?:train|val)_\d+\.bin$")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_path(out_dir: str | Path, name: str) -> Path:
    """DIR/NAME_tokenizer.json: the record of the tokenizer NAME_{train,val}_*.bin were written with."""
    return Path(out_dir) / f"{name}{RECORD_SUFFIX}"


def write_record(out_dir: str | Path, name: str, model: str | Path, vocab_size: int) -> Path:
    path = record_path(out_dir, name)
    path.write_text(json.dumps({"tokenizer": Path(model).name, "tokenizer_sha256": file_sha256(model),
                                "vocab_size": vocab_size}, indent=1) + "\n")
    return path


def recorded_tokenizer(shard_glob: str) -> tuple[Path, dict] | None:
    """(record path, {"tokenizer", "tokenizer_sha256", ...}) for shards `data prepare`
    wrote, None for shards without a record (e.g. the challenge's own)."""
    for shard in sorted(glob.glob(shard_glob)):
        m = _SHARD_NAME.match(Path(shard).name)
        path = record_path(Path(shard).parent, m["name"]) if m else None
        if path is not None and path.is_file():
            try:
                rec = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise EvalkitError(f"{path}: unreadable tokenizer record ({e}); rerun data prepare") from None
            if isinstance(rec, dict) and isinstance(rec.get("tokenizer_sha256"), str):
                return path, rec
            raise EvalkitError(f"{path}: no tokenizer_sha256 in the record; delete it or rerun data prepare")
        return None  # shards share one directory and name: the first decides
    return None
