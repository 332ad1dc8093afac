"""Artifact round trip, quantization bounds, and every bad-input case (one line, exit 2)."""
import hashlib
import json
import struct
import zlib

import pytest
import torch

from evalkit.model.artifact import MAGIC, counted_code_bytes, load_artifact, save_artifact
from evalkit.artifact import main
from evalkit.errors import EvalkitError
from evalkit.model.quant import QuantSpec, dequantize_rows, quantize_rows, quantize_state_dict
from tests.conftest import random_model, tiny_config


@pytest.mark.parametrize("compressor", ["lzma", "zlib", "zstd", "brotli"])
def test_round_trip_matches_dequantized_weights(tmp_path, compressor):
    pytest.importorskip({"zstd": "zstandard", "brotli": "brotli"}.get(compressor, "lzma"))
    cfg = tiny_config()
    model = random_model(cfg)
    entries = quantize_state_dict(model.state_dict(), QuantSpec(6, [("*.mlp.*", 5)], keep_float_numel=0))
    size = save_artifact(tmp_path / "a.ptz", cfg, entries, compressor, meta={"note": "x"})
    art = load_artifact(tmp_path / "a.ptz")
    assert art.nbytes == size and art.config == cfg and art.header["meta"] == {"note": "x"}
    for name, t in model.state_dict().items():
        e = entries[name]
        want = dequantize_rows(e["q"], e["scale"]) if e["kind"] == "q" else e["data"].float()
        assert torch.equal(art.state_dict[name], want), name
    fc = entries["blocks.0.mlp.fc.weight"]
    assert fc["bits"] == 5 and fc["q"].abs().max() <= 15


@pytest.mark.parametrize("bits", [8, 6, 5, 4])
def test_quantize_rows_error_bound(bits):
    w = torch.randn(32, 100)
    q, s = quantize_rows(w, bits)
    err = (dequantize_rows(q, s) - w).abs().max(dim=1).values
    assert (err <= s.float() * 0.5 + 1e-3 * s.float()).all()  # half a step per row (fp16 scale rounding)


def test_lowrank_correction_is_added(tmp_path):
    cfg = tiny_config()
    entries = quantize_state_dict(random_model(cfg).state_dict(), QuantSpec(8, keep_float_numel=0))
    a, b = torch.randn(64, 2), torch.randn(2, 64)
    entries["blocks.0.attn.c_q.weight"]["lowrank"] = [{"kind": "f32", "data": a}, {"kind": "f32", "data": b}]
    save_artifact(tmp_path / "a.ptz", cfg, entries)
    got = load_artifact(tmp_path / "a.ptz").state_dict["blocks.0.attn.c_q.weight"]
    e = entries["blocks.0.attn.c_q.weight"]
    assert torch.allclose(got, dequantize_rows(e["q"], e["scale"]) + a @ b)


def corrupt(path, fn):
    blob = bytearray(path.read_bytes())
    path.write_bytes(bytes(fn(blob)))


def _set_version(blob):
    blob[8:12] = struct.pack("<I", 99)
    return blob


def _flip_payload(blob):
    blob[-10] ^= 0xFF
    return blob


def _bad_compressor(blob):
    return bytes(blob).replace(b'"compressor":"lzma"', b'"compressor":"lzzz"')


CASES = {
    "missing": (None, "not found"),
    "bad magic": (lambda b: b"NOTMAGIC" + b[8:], "bad magic"),
    "truncated": (lambda b: b[:-100], "truncated"),
    "corrupt payload": (_flip_payload, "SHA-256"),
    "future version": (_set_version, "format version 99"),
    "truncated header": (lambda b: b[:40], "truncated"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_artifacts_raise_one_line(tiny_artifact, tmp_path, case, capsys):
    fn, needle = CASES[case]
    path = tmp_path / "missing.ptz" if fn is None else tiny_artifact
    if fn is not None:
        corrupt(path, fn)
    with pytest.raises(EvalkitError, match=needle):
        load_artifact(path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


def rewrite(path, edit_header, payload: bytes | None = None) -> None:
    """Re-write an artifact with an edited header (and payload), checksums made consistent,
    as a crafted file would be."""
    blob = path.read_bytes()
    hlen = struct.unpack("<I", blob[12:16])[0]
    header = json.loads(blob[16:16 + hlen])
    payload = blob[16 + hlen + 32:] if payload is None else payload
    header.update(payload_bytes=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest())
    edit_header(header)
    h = json.dumps(header).encode()
    path.write_bytes(blob[:12] + struct.pack("<I", len(h)) + h + hashlib.sha256(h).digest() + payload)


def test_edited_header_fails_its_checksum(tiny_artifact):
    # the payload checksum is still valid: only the header's own catches the edit
    corrupt(tiny_artifact, _bad_compressor)
    with pytest.raises(EvalkitError, match="header SHA-256 does not match"):
        load_artifact(tiny_artifact)


def test_unknown_compressor_in_header(tiny_artifact):
    rewrite(tiny_artifact, lambda h: h.update(compressor="lzzz"))
    with pytest.raises(EvalkitError, match="unknown compressor 'lzzz'"):
        load_artifact(tiny_artifact)


def test_decompression_stops_at_the_recorded_size(tiny_artifact):
    # 64 MB of zeros in a ~64 KB zlib stream, under a header that records the real size:
    # decompression must stop there instead of expanding the whole stream
    bomb = zlib.compress(bytes(64 << 20), 9)
    assert len(bomb) < 100_000
    rewrite(tiny_artifact, lambda h: h.update(compressor="zlib"), bomb)
    with pytest.raises(EvalkitError, match="decompresses past the .* bytes its header records"):
        load_artifact(tiny_artifact)
    # a header that records a huge size is refused before any decompression
    rewrite(tiny_artifact, lambda h: h.update(raw_bytes=1 << 40))
    with pytest.raises(EvalkitError, match="decompressed size of 1099511627776 bytes"):
        load_artifact(tiny_artifact)


def test_shape_mismatch_is_one_line(tiny_artifact, tmp_path, capsys):
    # the manifest's shapes disagree with its bytes
    rewrite(tiny_artifact, lambda h: h["tensors"][0]["q" if "q" in h["tensors"][0] else "data"].update(shape=[3, 5]))
    with pytest.raises(EvalkitError, match="does not match its shape"):
        load_artifact(tiny_artifact)
    # consistent bytes, but the config says another width than the weights have
    cfg = tiny_config()
    path = tmp_path / "wide.ptz"
    save_artifact(path, cfg, quantize_state_dict(random_model(cfg).state_dict(), QuantSpec(8)))
    rewrite(path, lambda h: h["config"].update(mlp_mult=3.0))
    from evalkit.engine.inputs import load_model
    with pytest.raises(EvalkitError, match=r"tensor blocks.0.mlp.fc.weight has shape \(128, 64\) but the model "
                                           r"config needs \(192, 64\)"):
        load_model(str(path), torch.device("cpu"))


def test_info_reports_budget(tiny_artifact, capsys):
    assert main(["info", str(tiny_artifact)]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "of 16,000,000" in out and "OK" in out
    assert f"counted code bytes: {counted_code_bytes():,}" in out


def test_magic_is_stable():
    assert MAGIC == b"EVKPTZ\r\n"
