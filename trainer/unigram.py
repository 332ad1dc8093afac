"""The unigram baseline a trained model must beat: bpb of p(token) = training frequency.

`python -m trainer.unigram --train GLOB --val GLOB --tokenizer M.model [--byte-sidecar G]` prints the bpb
of the val split under add-one-smoothed unigram counts of the training split, with the
engine's byte rule (every target position after the first, BOS targets included).
"""
from __future__ import annotations

import sys

import numpy as np

from evalkit.data.shards import ByteTable, load_stream, read_byte_sidecar
from evalkit.cli import CliParser, run_cli


def unigram_bpb(train: np.ndarray, val: np.ndarray, target_bytes: np.ndarray, vocab_size: int) -> float:
    """bits per byte of `val` under the add-one unigram distribution of `train`;
    `target_bytes` are the bytes charged per val position (ByteTable or sidecar)."""
    counts = np.bincount(train.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    bits = -logp[val[1:].astype(np.int64)].sum()
    return float(bits / target_bytes[1:].sum())


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m trainer.unigram", description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="training shard glob")
    p.add_argument("--val", required=True, help="validation shard glob")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model of both splits")
    p.add_argument("--byte-sidecar", default=None, help="per-token byte counts of the val split (case tokenizers)")

    def body() -> None:
        args = p.parse_args(argv)
        table = ByteTable.from_sentencepiece(args.tokenizer, allow_split_space=args.byte_sidecar is not None)
        val = load_stream(args.val)
        nbytes = read_byte_sidecar(args.byte_sidecar, val.size) if args.byte_sidecar else table.target_bytes(val)
        bpb = unigram_bpb(load_stream(args.train, flag="--train"), val, nbytes, table.vocab_size)
        print(f"unigram bpb {bpb:.4f}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
