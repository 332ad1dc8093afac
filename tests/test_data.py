"""Data layer: shard format, byte accounting against real tokenizers, bad input, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from evalkit.data.tokenizer import BOS_ID
from evalkit.data.shards import ByteTable, check_token_range, doc_starts, load_stream, read_byte_sidecar, read_shard, resolve_glob, write_shard
from evalkit.data.prepare import main
from evalkit.errors import EvalkitError
from evalkit.data.tokenizer import tokenize_documents, train_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"
needs_shared = pytest.mark.skipif(
    not (SHARED / "corpus").is_dir(), reason=f"shared data not found at {SHARED} (expected beside the checkout)"
)
REPO = Path(__file__).resolve().parents[1]


def _docs(tokens: np.ndarray) -> list[list[int]]:
    """Token ids of each document, BOS removed."""
    starts = list(doc_starts(tokens)) + [len(tokens)]
    return [tokens[a + 1 : b].tolist() for a, b in zip(starts[:-1], starts[1:])]


def _decoded_bytes(model: Path, tokens: np.ndarray) -> int:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return sum(len(sp.decode(ids).encode()) for ids in _docs(tokens))


def _collapse_ws(text: str) -> str:
    # What the challenge tokenizers' normalizer does besides NFKC: runs of whitespace,
    # newlines included, become one space, and leading/trailing whitespace goes.
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------- real data anchors


@needs_shared
@pytest.mark.parametrize(
    "shard, model, n_tokens",
    [
        ("fineweb_verify200_sp1024_val_000000.bin", "fineweb_1024_bpe.model", 628_457),
        ("fineweb_verify200_sp8192_val_000000.bin", "fineweb_8192_bpe.model", 420_973),
    ],
)
def test_fineweb_bytes_equal_decoded_text(shard: str, model: str, n_tokens: int) -> None:
    tokens = read_shard(SHARED / "corpus/shards" / shard)
    assert tokens.dtype == np.uint16 and tokens.size == n_tokens
    assert int((tokens == BOS_ID).sum()) == 200 and doc_starts(tokens).size == 200
    table = ByteTable.from_sentencepiece(SHARED / "tokenizers" / model)
    total = int(table.target_bytes(tokens).sum())
    assert total == 1_489_418
    assert total == _decoded_bytes(SHARED / "tokenizers" / model, tokens)


@needs_shared
def test_raw_text_is_97_bytes_longer_nfkc_plus_whitespace() -> None:
    docs = [json.loads(line)["text"] for line in open(SHARED / "corpus/fineweb_docs_200.jsonl", encoding="utf-8")]
    raw = sum(len(d.encode()) for d in docs)
    nfkc = [unicodedata.normalize("NFKC", d) for d in docs]
    assert raw == 1_489_515
    # The 97 bytes are 77 from NFKC and 20 from whitespace collapsing (nmt_nfkc's
    # remove_extra_whitespaces), not NFKC alone.
    assert sum(len(d.encode()) for d in nfkc) == 1_489_438
    assert sum(len(_collapse_ws(d).encode()) for d in nfkc) == 1_489_418


@needs_shared
def test_unknown_token_is_a_zero_byte_boundary() -> None:
    """<unk> is charged 0 bytes and swallows the '▁' of the next piece. Exact relation:
    the byte count equals the text decoded segment by segment, cutting at each <unk>
    (decode drops a segment's leading space just as the rule does after a boundary).
    Plain decoding renders <unk> as ' ⁇ ' and so over-counts; decoding with the unk ids
    removed over-counts by exactly the '▁' pieces that follow an unk mid-document."""
    import sentencepiece as spm

    model = SHARED / "tokenizers/other/fineweb_1024_bpe_nofallback.model"
    tokens = read_shard(SHARED / "corpus/shards/fineweb_78docs_sp1024nofallback_val_000000.bin")
    assert tokens.size == 201_203 and doc_starts(tokens).size == 78
    sp = spm.SentencePieceProcessor(model_file=str(model))
    table = ByteTable.from_sentencepiece(model)
    unk = sp.unk_id()
    assert table.is_boundary[unk] and table.base_bytes[unk] == 0
    assert int((tokens == unk).sum()) == 1272
    starts = list(doc_starts(tokens)) + [len(tokens)]
    by_segment = no_unk = full = swallowed = 0
    for a, b in zip(starts[:-1], starts[1:]):
        ids = tokens[a + 1 : b].tolist()
        segments, cur = [], []
        for i in ids + [unk]:
            if i == unk:
                segments.append(cur)
                cur = []
            else:
                cur.append(i)
        doc_bytes = int(table.target_bytes(tokens[a:b]).sum())
        doc_segments = sum(len(sp.decode(s).encode()) for s in segments)
        assert doc_bytes == doc_segments
        by_segment += doc_segments
        no_unk += len(sp.decode([i for i in ids if i != unk]).encode())
        full += len(sp.decode(ids).encode())
        seen_text = False
        for prev, cur_id in zip(ids, ids[1:]):
            seen_text |= prev != unk
            swallowed += prev == unk and seen_text and cur_id != unk and bool(table.leading_space[cur_id])
    assert by_segment == 500_836
    assert no_unk - swallowed == by_segment and swallowed == 334
    assert full > no_unk


# ---------------------------------------------------------------- shard format


def test_shard_round_trip(tmp_path: Path) -> None:
    tokens = np.array([1, 5, 0, 65535, 1, 7], np.uint16)
    write_shard(tmp_path / "a.bin", tokens)
    assert (tmp_path / "a.bin").stat().st_size == 1024 + 2 * tokens.size
    back = read_shard(tmp_path / "a.bin")
    assert back.dtype == np.uint16 and np.array_equal(back, tokens)


@pytest.mark.parametrize("bad", [65536, -1])
def test_write_refuses_ids_outside_uint16(tmp_path: Path, bad: int) -> None:
    with pytest.raises(EvalkitError, match="big.bin"):
        write_shard(tmp_path / "big.bin", np.array([1, bad], np.int64))


def _corrupt(path: Path, what: str) -> None:
    write_shard(path, np.arange(10, dtype=np.uint16))
    data = bytearray(path.read_bytes())
    if what == "magic":
        data[0:4] = np.int32(12345).tobytes()
    elif what == "version":
        data[4:8] = np.int32(2).tobytes()
    elif what == "truncated":
        data = data[:-2]
    elif what == "header":
        data = data[:100]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what, words", [("magic", "magic"), ("version", "version"), ("truncated", "truncated"), ("header", "header")])
def test_bad_shards_name_the_file(tmp_path: Path, what: str, words: str) -> None:
    path = tmp_path / f"shard_{what}.bin"
    _corrupt(path, what)
    with pytest.raises(EvalkitError, match=words) as e:
        read_shard(path)
    assert path.name in str(e.value) and "\n" not in str(e.value)


def test_empty_glob_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(EvalkitError, match=r"--val .*nothing_\*\.bin.* matches no file"):
        resolve_glob(str(tmp_path / "nothing_*.bin"))
    (tmp_path / "x_000.bin").write_bytes(b"")
    with pytest.raises(EvalkitError, match="x_000.bin is empty"):
        load_stream(str(tmp_path / "x_*.bin"), flag="--train")


def test_load_stream_sorted_concat_and_limit_docs(tmp_path: Path) -> None:
    write_shard(tmp_path / "s_000001.bin", np.array([1, 8, 9], np.uint16))
    write_shard(tmp_path / "s_000000.bin", np.array([1, 5, 6, 1, 7], np.uint16))
    pattern = str(tmp_path / "s_*.bin")
    assert load_stream(pattern).tolist() == [1, 5, 6, 1, 7, 1, 8, 9]
    assert load_stream(pattern, limit_docs=1).tolist() == [1, 5, 6]
    assert load_stream(pattern, limit_docs=2).tolist() == [1, 5, 6, 1, 7]
    assert load_stream(pattern, limit_docs=99).size == 8
    with pytest.raises(EvalkitError, match="--limit-docs"):
        load_stream(pattern, limit_docs=0)


def test_doc_starts() -> None:
    assert doc_starts(np.array([1, 5, 1, 1, 6], np.uint16)).tolist() == [0, 2, 3]
    assert doc_starts(np.array([5, 6, 1, 7], np.uint16)).tolist() == [0, 2]
    assert doc_starts(np.array([5, 6], np.uint16)).tolist() == [0]
    assert doc_starts(np.zeros(0, np.uint16)).dtype == np.int64


def test_token_range_message() -> None:
    check_token_range(np.array([0, 1023], np.uint16), 1024, "x.bin")
    with pytest.raises(EvalkitError, match=r"^token id 1500 at position 2 in val.bin is >= vocab size 1024; "):
        check_token_range(np.array([1, 3, 1500, 2000], np.uint16), 1024, "val.bin")


# ---------------------------------------------------------------- byte table


def _toy_table() -> ByteTable:
    # ids: 0 <s> (boundary), 1 'ab', 2 '▁cd', 3 byte piece, 4 '▁' alone, 5 '▁é'
    return ByteTable(
        base_bytes=np.array([0, 2, 2, 1, 0, 2], np.int16),
        leading_space=np.array([False, False, True, False, True, True]),
        is_boundary=np.array([True, False, False, False, False, False]),
    )


def test_target_bytes_gold() -> None:
    table = _toy_table()
    tokens = np.array([0, 2, 1, 2, 4, 3, 0, 5, 5], np.uint16)
    # pos0 never a target; '▁cd' after <s> loses its space; '▁' alone after a piece = 1.
    assert table.target_bytes(tokens).tolist() == [0, 2, 2, 3, 1, 1, 0, 2, 3]
    assert table.vocab_size == 6
    with pytest.raises(EvalkitError, match="vocab size 6"):
        table.target_bytes(np.array([0, 6], np.uint16))


def test_byte_sidecar(tmp_path: Path) -> None:
    write_shard(tmp_path / "b_000000.bin", np.array([0, 3, 1], np.uint16))
    write_shard(tmp_path / "b_000001.bin", np.array([4], np.uint16))
    got = read_byte_sidecar(str(tmp_path / "b_*.bin"), 4)
    assert got.dtype == np.int64 and got.tolist() == [0, 3, 1, 4]
    with pytest.raises(EvalkitError, match=r"b_\*\.bin.*4 values .* 5"):
        read_byte_sidecar(str(tmp_path / "b_*.bin"), 5)


def test_bad_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(EvalkitError, match="missing.model: no such file"):
        ByteTable.from_sentencepiece(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model at all")
    with pytest.raises(EvalkitError, match="junk.model: not a sentencepiece model"):
        ByteTable.from_sentencepiece(tmp_path / "junk.model")


@pytest.fixture(scope="module")
def spaceless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real BPE model trained on text without spaces, so '▁' is not a piece."""
    rng = np.random.default_rng(0)
    docs = ["".join(rng.choice(list("abcdefgh"), 60)) for _ in range(200)]
    return train_tokenizer_unchecked(docs, tmp_path_factory.mktemp("nospace") / "m")


def train_tokenizer_unchecked(docs: list[str], prefix: Path) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs), model_prefix=str(prefix), model_type="bpe", vocab_size=280,
        byte_fallback=True, add_dummy_prefix=False, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    return prefix.with_name(prefix.name + ".model")


def test_split_space_tokenizer_refused(spaceless_model: Path) -> None:
    with pytest.raises(EvalkitError, match=r"m\.model: '▁' is not a single piece.*C9"):
        ByteTable.from_sentencepiece(spaceless_model)
    table = ByteTable.from_sentencepiece(spaceless_model, allow_split_space=True)
    assert table.vocab_size >= 260


# ---------------------------------------------------------------- tokenizer training and CLI


def _synthetic_docs(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    words = "the of and to in a that is was he for it with as his on be at by i café naïve ﬁne Ⅳ 2024".split()
    docs = []
    for _ in range(n):
        paras = [" ".join(rng.choice(words, int(rng.integers(5, 40)))).capitalize() + "." for _ in range(3)]
        docs.append("\n\n".join(paras))
    return docs


def test_tokenize_documents_and_determinism(tmp_path: Path) -> None:
    docs = _synthetic_docs(60)
    a = train_tokenizer(docs, 300, tmp_path / "a" / "tok")
    b = train_tokenizer(docs, 300, tmp_path / "b" / "tok")
    assert a.read_bytes() == b.read_bytes()  # same docs -> byte-identical model anywhere
    tokens = tokenize_documents(docs[:3], a)
    assert tokens.dtype == np.uint16 and int((tokens == BOS_ID).sum()) == 3 and tokens[0] == BOS_ID
    with pytest.raises(EvalkitError, match="too small"):
        train_tokenizer(docs, 256, tmp_path / "c" / "tok")


def test_cli_prepare_bytes_match_val_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    docs = _synthetic_docs(80)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["prepare", "--input", str(src), "--train-tokenizer", "320", "--out", str(out), "--val-docs", "8", "--name", "syn"]) == 0
    printed = capsys.readouterr().out
    assert "val " in printed and "docs" in printed
    val = load_stream(str(out / "syn_val_*.bin"))
    train = load_stream(str(out / "syn_train_*.bin"))
    assert doc_starts(val).size == 8 and doc_starts(train).size == 72
    table = ByteTable.from_sentencepiece(out / "tokenizer.model")
    total = int(table.target_bytes(val).sum())
    assert total == _decoded_bytes(out / "tokenizer.model", val)
    expected = sum(len(_collapse_ws(unicodedata.normalize("NFKC", d)).encode()) for d in docs[-8:])
    assert total == expected
    assert total < sum(len(d.encode()) for d in docs[-8:])  # 'ﬁ' and 'Ⅳ' shrink, newlines collapse


def test_cli_prepare_txt_and_existing_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    docs = _synthetic_docs(12)
    src = tmp_path / "in.txt"
    src.write_text("\n\n\n".join(docs) + "\f" + "last doc\n", encoding="utf-8")
    model = train_tokenizer(docs, 300, tmp_path / "tok")
    assert main(["prepare", "--input", str(src), "--tokenizer", str(model), "--out", str(tmp_path / "o")]) == 0
    val = load_stream(str(tmp_path / "o" / "data_val_*.bin"))
    assert doc_starts(val).size == 1  # 13 docs -> 10% -> 1 val doc, the form-feed one
    assert (tmp_path / "o" / "tokenizer.model").read_bytes() == model.read_bytes()
    assert main(["info", str(tmp_path / "o" / "data_*.bin"), "--tokenizer", str(model)]) == 0
    assert "docs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["prepare", "--input", "NOPE.jsonl", "--train-tokenizer", "300", "--out", "o"], "NOPE.jsonl"),
        (["prepare", "--input", "BAD", "--train-tokenizer", "300", "--out", "o"], "BAD.jsonl:2"),
        (["prepare", "--input", "BAD", "--tokenizer", "no.model", "--out", "o", "--val-docs", "1"], "BAD.jsonl:2"),
        (["prepare", "--input", "GOOD", "--train-tokenizer", "300", "--out", "o", "--val-docs", "3"], "--val-docs 3"),
        (["prepare", "--input", "GOOD", "--out", "o"], "--tokenizer"),
        (["info", "nothing_*.bin"], "matches no file"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], needle: str) -> None:
    (tmp_path / "BAD.jsonl").write_text('{"text": "fine"}\n{"txt": 3}\n')
    (tmp_path / "GOOD.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    args = [str(tmp_path / "BAD.jsonl") if a == "BAD" else str(tmp_path / "GOOD.jsonl") if a == "GOOD" else a for a in args]
    args = [str(tmp_path / a) if a in ("o", "NOPE.jsonl", "nothing_*.bin") else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err


def test_cli_subprocess_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "evalkit.data", "info", str(tmp_path / "none_*.bin")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --") or proc.stderr.startswith("error: glob")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
