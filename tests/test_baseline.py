"""A train_gpt.py int8 export scores to what that script's eval_val would print.

The export and the reference evaluation are re-stated here independently of evalkit:
the export format (torch.save of the int8 dict, zlib), and a functional forward pass
written from the baseline's architecture description, evaluated as eval_val does
(tail dropped, non-overlapping windows, mean cross-entropy, byte LUTs)."""
import io
import json
import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evalkit.data.shards import ByteTable, load_stream
from evalkit.score import main
from tests.conftest import SP1024, VAL1024, random_model, require_shared, tiny_config

ENV = {"VOCAB_SIZE": 1024, "NUM_LAYERS": 3, "MODEL_DIM": 64, "NUM_HEADS": 4, "NUM_KV_HEADS": 2, "MLP_MULT": 2,
       "TIE_EMBEDDINGS": 1, "TRAIN_SEQ_LEN": 128, "ITERATIONS": 20000}
CONTROL = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight")


def export_like_baseline(state: dict, path, bf16: bool = False) -> dict:
    """int8 per-row (99.99984th percentile clip, fp16 scales) for big float matrices.
    bf16: the model was bf16 outside its control tensors (the script keeps tok_emb in
    bf16): `dtypes` and `passthrough_orig_dtypes` say so and loading casts back."""
    quantized, scales, dtypes, passthrough, orig = {}, {}, {}, {}, {}
    for name, t in state.items():
        t = t.float()
        if t.numel() <= 4096 or t.ndim != 2 or any(c in name for c in CONTROL):
            passthrough[name] = t if any(c in name for c in CONTROL) else t.half()
            if not any(c in name for c in CONTROL):
                orig[name] = "bfloat16" if bf16 else "float32"
            continue
        clip = torch.quantile(t.abs(), 0.9999984, dim=1)
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        quantized[name] = torch.clamp(torch.round(torch.clamp(t, -clip[:, None], clip[:, None]) / scale[:, None]),
                                      -127, 127).to(torch.int8)
        scales[name] = scale.half()
        dtypes[name] = "bfloat16" if bf16 and name == "tok_emb.weight" else "float32"
    obj = {"__quant_format__": "int8_clean_per_row_v1", "quantized": quantized, "scales": scales,
           "dtypes": dtypes, "passthrough": passthrough, "passthrough_orig_dtypes": orig}
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(zlib.compress(buf.getvalue(), 9))
    # what the script's dequantize_state_dict_int8 gives back: cast to the saved dtypes
    cast = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    out = {n: (q.float() * scales[n].float()[:, None]).to(cast[dtypes[n]]).float() for n, q in quantized.items()}
    out.update({n: t.to(cast[orig[n]]).float() if n in orig else t.float() for n, t in passthrough.items()})
    return out


def reference_logits(w: dict, x: torch.Tensor, env: dict) -> torch.Tensor:
    L, d, H, Hkv = env["NUM_LAYERS"], env["MODEL_DIM"], env["NUM_HEADS"], env["NUM_KV_HEADS"]
    hd, T = d // H, x.shape[1]
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(T).float(), inv)
    cos, sin = ang.cos(), ang.sin()

    def rope(z):
        a, b = z[..., :hd // 2], z[..., hd // 2:]
        return torch.cat([a * cos + b * sin, -a * sin + b * cos], -1)

    def norm(z):
        return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + torch.finfo(z.dtype).eps)

    h = norm(w["tok_emb.weight"][x])
    h0, skips, n_enc = h, [], L // 2
    for i in range(L):
        p = f"blocks.{i}."
        if i >= n_enc and skips:
            h = h + w["skip_weights"][i - n_enc] * skips.pop()
        h = w[p + "resid_mix"][0] * h + w[p + "resid_mix"][1] * h0
        a = norm(h)
        q = norm((a @ w[p + "attn.c_q.weight"].T).view(1, T, H, hd).transpose(1, 2))
        k = norm((a @ w[p + "attn.c_k.weight"].T).view(1, T, Hkv, hd).transpose(1, 2))
        v = (a @ w[p + "attn.c_v.weight"].T).view(1, T, Hkv, hd).transpose(1, 2)
        q = rope(q) * w[p + "attn.q_gain"][None, :, None, None]
        k, v = rope(k).repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + torch.full((T, T), float("-inf")).triu(1)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(1, T, d) @ w[p + "attn.proj.weight"].T
        h = h + w[p + "attn_scale"] * y
        m = torch.relu(norm(h) @ w[p + "mlp.fc.weight"].T).square() @ w[p + "mlp.proj.weight"].T
        h = h + w[p + "mlp_scale"] * m
        if i < n_enc:
            skips.append(h)
    logits = norm(h) @ w["tok_emb.weight"].T
    return 30.0 * torch.tanh(logits / 30.0)


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-tok_emb"])
def test_baseline_export_scores_like_eval_val(tmp_path, bf16):
    require_shared()
    cfg = tiny_config(num_layers=3, train_seq_len=128)
    weights = export_like_baseline(random_model(cfg, seed=3).state_dict(), tmp_path / "final_model.int8.ptz", bf16)
    (tmp_path / "H.json").write_text(json.dumps(ENV))
    out = tmp_path / "r.json"
    rc = main([str(tmp_path / "final_model.int8.ptz"), "--baseline-config", str(tmp_path / "H.json"),
               "--val", str(VAL1024), "--tokenizer", str(SP1024), "--strategy", "flat", "--seq-len", "128",
               "--limit-docs", "2", "--no-progress", "--json", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())["results"][0]

    tokens = load_stream(str(VAL1024), limit_docs=2)
    usable = ((tokens.size - 1) // 128) * 128
    t = torch.from_numpy(tokens[:usable + 1].astype(np.int64))
    x, y = t[:-1].view(-1, 128), t[1:].view(-1, 128)
    with torch.no_grad():
        losses = [F.cross_entropy(reference_logits(weights, x[i:i + 1], ENV)[0], y[i]) for i in range(x.shape[0])]
    val_loss = float(torch.stack(losses).double().mean())
    table = ByteTable.from_sentencepiece(SP1024)
    nbytes = float(table.target_bytes(tokens[:usable + 1])[1:].sum())
    val_bpb = val_loss / math.log(2) * usable / nbytes
    assert got["tokens"] == usable
    assert got["val_loss"] == pytest.approx(val_loss, abs=1e-5)
    assert got["val_bpb"] == pytest.approx(val_bpb, abs=1e-5)


def test_baseline_config_errors(tmp_path, capsys):
    require_shared()
    (tmp_path / "H.json").write_text(json.dumps({"NUM_LAYERZ": 3}))
    (tmp_path / "m.ptz").write_bytes(zlib.compress(b"junk"))
    rc = main([str(tmp_path / "m.ptz"), "--baseline-config", str(tmp_path / "H.json"), "--val", str(VAL1024),
               "--tokenizer", str(SP1024)])
    assert rc == 2 and "NUM_LAYERZ" in capsys.readouterr().err
    (tmp_path / "H.json").write_text(json.dumps({"NUM_LAYERS": 3}))
    rc = main([str(tmp_path / "m.ptz"), "--baseline-config", str(tmp_path / "H.json"), "--val", str(VAL1024),
               "--tokenizer", str(SP1024)])
    err = capsys.readouterr().err
    assert rc == 2 and "m.ptz" in err and err.count("\n") == 1
