"""Case-transform tokenizer: the transform round-trips and the byte sidecar's total
equals the original text's UTF-8 bytes (legality C9)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evalkit.data.shards import read_shard
from trainer.captok import CAP_MARK, decode_case, encode_case, encode_docs, prepare

TEXTS = ["The Quick brown FOX jumps.  Twice,  over Éclair and Ωmega in İstanbul.",
         "naïve café ÜBER straße — 100 km/h; “Quoted” text.\n\nNew paragraph with CAPS and ß."]


def test_case_transform_round_trips():
    for t in TEXTS:
        enc = encode_case(t)
        assert decode_case(enc) == t
        assert enc.replace(CAP_MARK, "") == "".join(c.lower() if c.lower().upper() == c and len(c.lower()) == 1
                                                    and len(c.lower().encode()) == len(c.encode()) else c for c in t)
    assert encode_case("The") == CAP_MARK + "the"


def test_sidecar_counts_original_bytes(tmp_path):
    docs = [TEXTS[i % 2] + f" Document {i} Has Some More Words In Title Case." * 8 for i in range(30)]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    r = prepare(str(src), 400, str(tmp_path / "out"), val_docs=5)
    tokens = read_shard(tmp_path / "out" / "captok_val_000000.bin")
    sidecar = read_shard(tmp_path / "out" / "bytes_val_000000.bin")
    assert tokens.size == sidecar.size
    assert int(sidecar.astype(np.int64).sum()) == sum(len(d.encode()) for d in docs[-5:]) == r["val"]["bytes"]
    assert (sidecar[tokens == 1] == 0).all()  # BOS spells nothing
    # The marker is one piece and is charged 0 bytes.
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=r["tokenizer"])
    mark = sp.piece_to_id(CAP_MARK)
    assert mark != sp.unk_id() and (sidecar[tokens == mark] == 0).all() and (tokens == mark).any()
    with pytest.raises(Exception, match="U\\+E000"):
        encode_docs(["bad " + CAP_MARK], tmp_path / "out" / "captok.model")
