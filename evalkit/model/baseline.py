"""Import the challenge baseline's own export: `final_model.int8.ptz` from train_gpt.py.

That file is zlib(torch.save(dict)) holding int8 per-row matrices with fp16 scales and
float passthrough tensors. Its model shape lives in the script's environment variables,
so the user passes them as a JSON file (`--baseline-config H.json`). Loading uses
`torch.load(weights_only=True)`: tensors, strings and dicts only, never code.
"""
from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import torch

from evalkit.errors import EvalkitError
from evalkit.model.gpt import GPTConfig

# The script's environment names for the model's shape, with its defaults.
MODEL_KEYS = {
    "VOCAB_SIZE": ("vocab_size", int, 1024), "NUM_LAYERS": ("num_layers", int, 9),
    "MODEL_DIM": ("model_dim", int, 512), "NUM_HEADS": ("num_heads", int, 8),
    "NUM_KV_HEADS": ("num_kv_heads", int, 4), "MLP_MULT": ("mlp_mult", int, 2),
    "TIE_EMBEDDINGS": ("tie_embeddings", lambda v: bool(int(v)), True),
    "ROPE_BASE": ("rope_base", float, 10000.0), "LOGIT_SOFTCAP": ("logit_softcap", float, 30.0),
    "QK_GAIN_INIT": ("qk_gain_init", float, 1.5), "TRAIN_SEQ_LEN": ("train_seq_len", int, 1024),
    "TIED_EMBED_INIT_STD": ("tied_embed_init_std", float, 0.005),
}
# Training-only names the script also reads: accepted in H.json and ignored here.
TRAINING_KEYS = {
    "DATA_PATH", "TOKENIZER_PATH", "RUN_ID", "SEED", "VAL_BATCH_SIZE", "VAL_LOSS_EVERY", "TRAIN_LOG_EVERY",
    "ITERATIONS", "WARMDOWN_ITERS", "WARMUP_STEPS", "TRAIN_BATCH_TOKENS", "MAX_WALLCLOCK_SECONDS", "EMBED_LR",
    "HEAD_LR", "TIED_EMBED_LR", "MATRIX_LR", "SCALAR_LR", "MUON_MOMENTUM", "MUON_BACKEND_STEPS",
    "MUON_MOMENTUM_WARMUP_START", "MUON_MOMENTUM_WARMUP_STEPS", "BETA1", "BETA2", "ADAM_EPS", "GRAD_CLIP_NORM",
}
QUANT_FORMAT = "int8_clean_per_row_v1"


def config_from_env_json(path: str | Path) -> GPTConfig:
    path = Path(path)
    try:
        env = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalkitError(f"--baseline-config {path}: cannot read it as JSON ({e})") from e
    if not isinstance(env, dict):
        raise EvalkitError(f"--baseline-config {path}: expected a JSON object of NAME: value")
    unknown = sorted(set(env) - set(MODEL_KEYS) - TRAINING_KEYS)
    if unknown:
        raise EvalkitError(f"--baseline-config {path}: unknown names {unknown}; known: {sorted(MODEL_KEYS)}")
    values = {}
    for env_name, (field, cast, default) in MODEL_KEYS.items():
        try:
            values[field] = cast(env[env_name]) if env_name in env else default
        except (TypeError, ValueError) as e:
            raise EvalkitError(f"--baseline-config {path}: {env_name}={env[env_name]!r} is not valid ({e})") from e
    return GPTConfig(**values)


_FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _as_saved(t: torch.Tensor, dtype: str | None, name: str, path: Path) -> torch.Tensor:
    """Round `t` through the dtype the script casts it back to on load (`dtypes` for
    quantized tensors, `passthrough_orig_dtypes` for kept ones: tok_emb stays bf16), then
    float32 for evalkit: the weights are the ones the script's own eval uses."""
    if dtype is None:
        return t.float() if t.is_floating_point() else t
    if dtype not in _FLOAT_DTYPES:
        raise EvalkitError(f"{path}: tensor {name} has dtype {dtype!r} in the export; expected one of "
                           f"{sorted(_FLOAT_DTYPES)}")
    return t.to(_FLOAT_DTYPES[dtype]).float()


def _dequantize(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    out = {}
    dtypes, orig = obj.get("dtypes", {}), obj.get("passthrough_orig_dtypes", {})
    for name, q in obj["quantized"].items():
        s = obj["scales"][name].float()
        if s.ndim > 0:  # one scale per row, broadcast over the trailing dimensions
            w = q.float() * s.view(q.shape[0], *([1] * (q.ndim - 1)))
        else:
            w = q.float() * float(s)
        out[name] = _as_saved(w, dtypes.get(name), name, path)
    for name, t in obj["passthrough"].items():
        out[name] = _as_saved(t, orig.get(name) if t.is_floating_point() else None, name, path)
    return out


def load_baseline(path: str | Path, config_path: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor], bytes]:
    """(config, float32 state dict, file bytes) from a train_gpt.py int8 export."""
    path = Path(path)
    cfg = config_from_env_json(config_path)
    if not path.is_file():
        raise EvalkitError(f"{path}: artifact not found")
    blob = path.read_bytes()
    try:
        raw = zlib.decompress(blob)
    except zlib.error as e:
        raise EvalkitError(f"{path}: not a zlib-compressed baseline export ({e}); drop --baseline-config "
                           "for evalkit artifacts") from e
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or unsafe pickles
        raise EvalkitError(f"{path}: not a loadable baseline export ({str(e).splitlines()[0]})") from e
    if not isinstance(obj, dict) or obj.get("__quant_format__") != QUANT_FORMAT:
        raise EvalkitError(f"{path}: quant format {obj.get('__quant_format__') if isinstance(obj, dict) else None!r}"
                           f", expected {QUANT_FORMAT!r} (the baseline train_gpt.py export)")
    return cfg, _dequantize(obj, path), blob
