"""The case-transform ("cap") tokenizer of pr1938, with the per-token byte sidecar.

Text is lowercased, and every uppercase letter becomes CAP_MARK + its lowercase form, so
"The" and "the" share pieces. The marker is a user-defined SentencePiece symbol (always
one piece). Because pieces no longer spell the original text, the challenge's byte table
would count the wrong bytes; the sidecar (evalkit.data shard format, uint16 per token)
holds each token's original UTF-8 bytes and is scored with `--byte-sidecar` (legality
C9): BOS and CAP_MARK count 0, every other token the bytes it spells, which the lowercase
form shares with the original letter (only letters whose case pair has the same UTF-8
length are transformed). Normalization is "identity" so decode(encode(x)) == x and the
sidecar total equals the original text's UTF-8 byte count exactly.

    python -m trainer.captok --input DOCS.jsonl --vocab 1024 --out DIR [--val-docs N]
writes DIR/captok.model, captok_{train,val}_000000.bin and bytes_val_000000.bin.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

from evalkit.cli import CliParser, run_cli
from evalkit.data.tokenizer import BOS_ID
from evalkit.data.prepare import make_dir, read_documents
from evalkit.data.shards import write_shards
from evalkit.errors import EvalkitError

CAP_MARK = "\ue000"  # a private-use character: never in normal text, 3 UTF-8 bytes


def _marks(c: str) -> bool:
    low = c.lower()
    return c != low and len(low) == 1 and low.upper() == c and len(low.encode()) == len(c.encode())


def encode_case(text: str) -> str:
    """'The' -> MARK + 'the'; letters without a clean one-to-one lowercase pass through."""
    if CAP_MARK in text:
        raise EvalkitError("captok: the text contains the capital marker U+E000; remove it first")
    return "".join(CAP_MARK + c.lower() if _marks(c) else c for c in text)


def decode_case(text: str) -> str:
    out, upper = [], False
    for c in text:
        if c == CAP_MARK:
            upper = True
            continue
        out.append(c.upper() if upper else c)
        upper = False
    return "".join(out)


def train_captok(docs: list[str], vocab_size: int, out: Path) -> Path:
    """BPE on case-encoded training documents; returns OUT/captok.model."""
    import sentencepiece as spm

    lines = [ln for d in docs for ln in encode_case(d).split("\n") if ln.strip()]
    buf = io.BytesIO()
    spm.set_random_generator_seed(1234)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
            user_defined_symbols=[CAP_MARK], normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False,  # keep every space: the sidecar must count them
            byte_fallback=True, split_digits=True, character_coverage=0.999, pad_id=0, bos_id=1, eos_id=2,
            unk_id=3, hard_vocab_limit=False, num_threads=1, max_sentence_length=16384, minloglevel=2)
    except RuntimeError as e:
        raise EvalkitError(f"captok --vocab {vocab_size}: sentencepiece failed: {e}") from None
    path = out / "captok.model"
    path.write_bytes(buf.getvalue())
    return path


def token_bytes(sp) -> np.ndarray:
    """Original-text bytes each id spells: markers and control ids 0, byte pieces 1."""
    counts = np.zeros(sp.vocab_size(), np.int64)
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            counts[i] = 1
        elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or piece == CAP_MARK):
            counts[i] = len(piece.replace("\u2581", " ").encode())
    return counts


def encode_docs(docs: list[str], model: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, per-token original bytes) with BOS before each document; checks that the
    byte total equals the documents' UTF-8 length (the C9 invariant)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    ids = sp.encode([encode_case(d) for d in docs], out_type=int)
    tokens = np.concatenate([np.array([BOS_ID] + x, np.int64) for x in ids])
    nbytes = token_bytes(sp)[tokens]
    nbytes[tokens == BOS_ID] = 0
    want = sum(len(d.encode()) for d in docs)
    if int(nbytes.sum()) != want:
        raise EvalkitError(f"captok: sidecar counts {int(nbytes.sum())} bytes but the text has {want}; "
                           "the tokenizer does not round-trip this text (retrain it on these documents)")
    return tokens, nbytes


def prepare(input_path: str, vocab_size: int, out_dir: str, val_docs: int) -> dict:
    docs = read_documents(input_path)
    if not 1 <= val_docs < len(docs):
        raise EvalkitError(f"--val-docs {val_docs}: need 1 <= N < {len(docs)}")
    out = make_dir(out_dir, "--out")
    model = train_captok(docs[:-val_docs], vocab_size, out)  # training documents only (C6)
    result = {"tokenizer": str(model)}
    for split, part in (("train", docs[:-val_docs]), ("val", docs[-val_docs:])):
        tokens, nbytes = encode_docs(part, model)
        write_shards(out, f"captok_{split}", tokens)
        if split == "val":
            write_shards(out, "bytes_val", nbytes)
        result[split] = {"docs": len(part), "tokens": int(tokens.size), "bytes": int(nbytes.sum())}
    return result


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m trainer.captok", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help=".jsonl ({'text': ...} per line) or .txt documents")
    p.add_argument("--vocab", type=int, default=1024, help="SentencePiece vocabulary size")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-docs", type=int, default=50, help="the last N documents become validation")

    def body() -> None:
        args = p.parse_args(argv)
        r = prepare(args.input, args.vocab, args.out, args.val_docs)
        print(f"tokenizer {r['tokenizer']}")
        for split in ("train", "val"):
            print(f"{split:<6} docs {r[split]['docs']:,}  tokens {r[split]['tokens']:,}  bytes {r[split]['bytes']:,}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
