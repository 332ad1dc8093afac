"""The data layer: challenge-format token shards, documents, and byte accounting.

A shard is 256 little-endian int32 (magic, version, token count, zeros) followed by the
tokens as little-endian uint16, exactly as openai/parameter-golf writes them. Every
document starts with BOS (id 1). The score divides by bytes counted with the challenge's
rule (see `ByteTable`), so this module is the single place that knows that rule.

Documents -> shards (`python -m evalkit.data prepare`) live in evalkit/data/prepare.py.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalkit.errors import EvalkitError
from evalkit.data.tokenizer import BOS_ID, SPACE_PIECE, load_sentencepiece

log = logging.getLogger(__name__)

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_SHARD_TOKENS = 100_000_000  # the challenge's shard size; keeps any one file < 200 MB


# ---------------------------------------------------------------- shards


def read_shard(path: str | Path) -> np.ndarray:
    """Tokens of one shard as uint16, after checking magic, version and exact file size."""
    path = Path(path)
    if not path.is_file():
        raise EvalkitError(f"{path}: no such shard file; check the path")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise EvalkitError(
            f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte shard header; "
            "the file is truncated or not a shard"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != SHARD_MAGIC:
        raise EvalkitError(
            f"{path}: bad magic {int(header[0])} (expected {SHARD_MAGIC}); "
            "not a parameter-golf shard — regenerate it with `python -m evalkit.data prepare`"
        )
    if header[1] != SHARD_VERSION:
        raise EvalkitError(
            f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION}); "
            "regenerate it with `python -m evalkit.data prepare`"
        )
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        raise EvalkitError(
            f"{path}: file is {size} bytes but its header promises {count} tokens "
            f"({expected} bytes); the file is truncated or corrupt — regenerate it"
        )
    return np.fromfile(path, dtype="<u2", count=count, offset=HEADER_BYTES).astype(np.uint16, copy=False)


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write `tokens` as one shard; ids must fit uint16 because that is the on-disk type."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise EvalkitError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= 65536):
        bad = int(tokens.max()) if int(tokens.max()) >= 65536 else int(tokens.min())
        raise EvalkitError(
            f"{path}: token id {bad} does not fit uint16 (0..65535); "
            "shards cannot hold vocabularies larger than 65536"
        )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2", copy=False).tobytes())


def write_shards(out_dir: Path, prefix: str, tokens: np.ndarray) -> list[Path]:
    """Split a stream into PREFIX_000000.bin, ... of at most MAX_SHARD_TOKENS each."""
    paths = []
    for i, start in enumerate(range(0, max(tokens.size, 1), MAX_SHARD_TOKENS)):
        path = out_dir / f"{prefix}_{i:06d}.bin"
        write_shard(path, tokens[start : start + MAX_SHARD_TOKENS])
        paths.append(path)
    return paths


def resolve_glob(pattern: str, flag: str = "--val") -> list[Path]:
    """Files matching `pattern`, sorted (shard order is the stream order)."""
    paths = sorted(Path(p) for p in glob.glob(pattern))
    if not paths:
        raise EvalkitError(f"{flag} {pattern!r} matches no file; check the path (quote globs)")
    for p in paths:
        if p.is_file() and p.stat().st_size == 0:
            raise EvalkitError(f"{flag}: {p} is empty; remove it or regenerate the shards")
    return paths


def load_stream(pattern: str, limit_docs: int | None = None, flag: str = "--val") -> np.ndarray:
    """All shards matching `pattern` concatenated; `limit_docs` keeps the first N documents."""
    parts = [read_shard(p) for p in resolve_glob(pattern, flag)]
    tokens = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if tokens.size == 0:
        raise EvalkitError(f"{flag} {pattern!r}: the shards hold no tokens; regenerate them")
    if limit_docs is not None:
        if limit_docs < 1:
            raise EvalkitError(f"--limit-docs must be >= 1, got {limit_docs}")
        starts = doc_starts(tokens)
        if limit_docs < starts.size:
            tokens = tokens[: starts[limit_docs]]
        elif limit_docs > starts.size:
            log.warning("%s has only %d documents; using all of them", pattern, starts.size)
    return tokens


def doc_starts(tokens: np.ndarray, bos_id: int = BOS_ID) -> np.ndarray:
    """Start of every document: BOS positions, plus 0 when the stream does not open with BOS."""
    starts = np.flatnonzero(np.asarray(tokens) == bos_id).astype(np.int64)
    if len(tokens) and (starts.size == 0 or starts[0] != 0):
        starts = np.concatenate([np.zeros(1, np.int64), starts])
    return starts


def check_token_range(tokens: np.ndarray, vocab_size: int, source: str) -> None:
    """Refuse ids the model cannot embed; a mismatch means shards and tokenizer disagree."""
    if tokens.size == 0 or int(tokens.max()) < vocab_size:
        return
    pos = int(np.argmax(tokens >= vocab_size))
    raise EvalkitError(
        f"token id {int(tokens[pos])} at position {pos} in {source} is >= vocab size "
        f"{vocab_size}; the shards were made with another tokenizer — pass the matching one"
    )


# ---------------------------------------------------------------- byte accounting


@dataclass(frozen=True)
class ByteTable:
    """The challenge's byte rule: a target y after token x is charged
    base_bytes[y] + (leading_space[y] and not is_boundary[x]). A leading '▁' after a
    boundary (BOS, <unk>) is not charged because decoding drops it there too."""

    base_bytes: np.ndarray  # int16 (V,): UTF-8 bytes without the leading '▁'; byte pieces 1
    leading_space: np.ndarray  # bool (V,): piece starts with '▁'
    is_boundary: np.ndarray  # bool (V,): control / unknown / unused, charged 0 bytes

    @classmethod
    def from_sentencepiece(cls, model_path: str | Path, allow_split_space: bool = False) -> ByteTable:
        sp = load_sentencepiece(model_path)
        if sp.piece_to_id(SPACE_PIECE) == sp.unk_id() and not allow_split_space:
            # Without a '▁' piece a bare space is byte-fallback tokens and the table
            # under-counts the text (legality rule C9, parameter-golf issue #897).
            raise EvalkitError(
                f"tokenizer {model_path}: '▁' is not a single piece, so bytes would be "
                "mis-counted (legality C9); retrain it with '▁' in the vocabulary or "
                "pass a per-token byte sidecar (--byte-sidecar)"
            )
        v = sp.vocab_size()
        base = np.zeros(v, np.int16)
        lead = np.zeros(v, bool)
        boundary = np.zeros(v, bool)
        for i in range(v):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                boundary[i] = True
            elif sp.is_byte(i):
                base[i] = 1  # one raw byte of a character outside the vocabulary
            else:
                piece = sp.id_to_piece(i)
                lead[i] = piece.startswith(SPACE_PIECE)
                base[i] = len(piece[1:].encode() if lead[i] else piece.encode())
        return cls(base, lead, boundary)

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.shape[0])

    def target_bytes(self, tokens: np.ndarray) -> np.ndarray:
        """int64 bytes charged at each position; position 0 is never a target, so 0."""
        check_token_range(tokens, self.vocab_size, "the token stream")
        out = np.zeros(len(tokens), np.int64)
        if len(tokens) > 1:
            y = tokens[1:].astype(np.int64)
            x = tokens[:-1].astype(np.int64)
            out[1:] = self.base_bytes[y] + (self.leading_space[y] & ~self.is_boundary[x])
        return out


def read_byte_sidecar(pattern: str, n_tokens: int, flag: str = "--byte-sidecar") -> np.ndarray:
    """Per-token bytes from shard-format files (for case-transform tokenizers whose
    pieces do not spell the original text); int64 (n_tokens,), replaces the table."""
    parts = [read_shard(p) for p in resolve_glob(pattern, flag)]
    out = np.concatenate(parts).astype(np.int64)
    if out.size != n_tokens:
        raise EvalkitError(
            f"{flag} {pattern!r}: byte sidecar has {out.size} values but the token stream "
            f"has {n_tokens}; regenerate the sidecar with the same shards"
        )
    return out
