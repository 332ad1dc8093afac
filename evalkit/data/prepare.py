"""Documents -> tokenizer + challenge-format shards, and the `python -m evalkit.data` CLI.

CLI (bad input prints one `error: ...` line on stderr and exits 2):
    python -m evalkit.data prepare --input X.jsonl|X.txt (--tokenizer M.model | --train-tokenizer V)
                                   --out DIR [--val-docs N] [--name NAME]
    python -m evalkit.data info GLOB [--tokenizer M.model]
Input formats for `prepare`: .jsonl holds one {"text": ...} object per line; any other
file is plain text whose documents are separated by a form feed or by two or more
consecutive blank lines (a single blank line is a paragraph break inside a document).
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from evalkit.cli import CliParser, run_cli
from evalkit.data.shards import ByteTable, doc_starts, load_stream, write_shards
from evalkit.data.tokenizer import BOS_ID, load_sentencepiece, tokenize_documents, train_tokenizer, write_record
from evalkit.errors import EvalkitError

_TXT_DOC_SEP = re.compile(r"\f|\n[ \t]*\n(?:[ \t]*\n)+")


def read_documents(path: str | Path) -> list[str]:
    """Documents of a .jsonl ({"text": ...} per line) or plain-text file (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise EvalkitError(f"--input {path}: no such file")
    text = path.read_text(encoding="utf-8", errors="strict")
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EvalkitError(f"--input {path}:{n}: expected a JSON object with a \"text\" string") from None
            if not isinstance(doc, str):
                raise EvalkitError(f"--input {path}:{n}: \"text\" must be a string")
            docs.append(doc)
    else:
        docs = [d.strip("\n") for d in _TXT_DOC_SEP.split(text)]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise EvalkitError(f"--input {path}: no documents found; a .jsonl needs one {{\"text\": ...}} object per "
                           "line, other files hold text with documents separated by two blank lines")
    return docs


def prepare(
    input_path: str | Path,
    out_dir: str | Path,
    tokenizer: str | Path | None = None,
    train_vocab: int | None = None,
    val_docs: int | None = None,
    name: str = "data",
) -> dict:
    """Documents -> DIR/tokenizer.model + NAME_{train,val}_NNNNNN.bin + NAME_tokenizer.json (the
    tokenizer's SHA-256, which the trainer copies into the artifact and scoring checks);
    returns paths and counts."""
    if (tokenizer is None) == (train_vocab is None):
        raise EvalkitError("prepare: give exactly one of --tokenizer and --train-tokenizer")
    docs = read_documents(input_path)
    n_val = max(1, len(docs) // 10) if val_docs is None else val_docs
    if not 1 <= n_val < len(docs):
        raise EvalkitError(f"--val-docs {n_val}: need 1 <= N < {len(docs)} (the number of documents)")
    train, val = docs[:-n_val], docs[-n_val:]
    out = make_dir(out_dir, "--out")
    model = out / "tokenizer.model"
    if tokenizer is not None:
        load_sentencepiece(tokenizer)  # fail on a bad model before writing anything
        if not model.exists() or not model.samefile(tokenizer):
            shutil.copyfile(tokenizer, model)
    else:
        model = train_tokenizer(train, int(train_vocab), out / "tokenizer")  # train docs only (C6)
    if load_sentencepiece(model).bos_id() != BOS_ID:
        raise EvalkitError(f"tokenizer {tokenizer}: BOS id must be {BOS_ID} like the challenge's")
    table = ByteTable.from_sentencepiece(model)
    result: dict = {"tokenizer": model, "vocab_size": table.vocab_size,
                    "record": write_record(out, name, model, table.vocab_size)}
    for split, split_docs in (("train", train), ("val", val)):
        tokens = tokenize_documents(split_docs, model)
        write_shards(out, f"{name}_{split}", tokens)
        result[split] = {
            "glob": str(out / f"{name}_{split}_*.bin"),
            "docs": len(split_docs),
            "tokens": int(tokens.size),
            "bytes": int(table.target_bytes(tokens).sum()),
            "text_bytes": sum(len(d.encode()) for d in split_docs),
        }
    return result


# ---------------------------------------------------------------- CLI

NORMALIZED_NOTE = ("bytes: UTF-8 bytes of the text the tokens decode to, which val_bpb divides by; the tokenizer "
                   "normalizes (NFKC, whitespace), so they can differ from the raw text's bytes")


def make_dir(path: str | Path, flag: str) -> Path:
    """mkdir -p that reports an unusable path as bad input rather than a traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalkitError(f"{flag} {path}: cannot create the directory ({e.strerror})") from None
    return path


def _print_counts(label: str, docs: int, tokens: int, nbytes: int | None, text_bytes: int | None = None) -> None:
    line = f"{label:<6} docs {docs:>9,}  tokens {tokens:>13,}"
    if nbytes is not None:
        line += f"  bytes {nbytes:>14,}"
    if text_bytes is not None:
        line += f"  (raw text {text_bytes:,} bytes)"
    print(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="python -m evalkit.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=CliParser)
    p = sub.add_parser("prepare", help="documents -> tokenizer + challenge-format shards")
    p.add_argument("--input", required=True, help=".jsonl ({'text':...} per line) or .txt")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", help="existing sentencepiece .model to copy and use")
    tok.add_argument("--train-tokenizer", type=int, metavar="VOCAB", help="train a BPE of this size on train docs")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-docs", type=int, help="last N documents become validation (default 10%%, >= 1)")
    p.add_argument("--name", default="data", help="shard name prefix (default: data)")
    i = sub.add_parser("info", help="tokens, documents and bytes of shards")
    i.add_argument("glob", help="shard glob, e.g. 'DIR/data_val_*.bin'")
    i.add_argument("--tokenizer", help="sentencepiece .model, to count bytes")

    def body() -> None:
        args = parser.parse_args(argv)
        if args.cmd == "prepare":
            r = prepare(args.input, args.out, args.tokenizer, args.train_tokenizer, args.val_docs, args.name)
            print(f"tokenizer {r['tokenizer']} (vocab {r['vocab_size']})")
            for split in ("train", "val"):
                s = r[split]
                _print_counts(split, s["docs"], s["tokens"], s["bytes"], s["text_bytes"])
                print(f"       {s['glob']}")
            print(NORMALIZED_NOTE)
            print(f"tokenizer SHA-256 recorded in {r['record']}")
        else:
            tokens = load_stream(args.glob, flag="glob")
            nbytes = None
            if args.tokenizer:
                nbytes = int(ByteTable.from_sentencepiece(args.tokenizer, True).target_bytes(tokens).sum())
            _print_counts("shards", int(doc_starts(tokens).size), int(tokens.size), nbytes)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
