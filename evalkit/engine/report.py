"""Results out: the Markdown table and the JSON record shared by every CLI."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

import evalkit


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]] | None = None) -> str:
    """rows of dicts -> a Markdown table. columns: (key, header, format spec)."""
    columns = columns or [("strategy", "strategy", ""), ("val_loss", "val_loss", ".4f"),
                          ("val_bpb", "val_bpb", ".4f"), ("tokens", "tokens", ","), ("bytes", "bytes", ","),
                          ("seconds", "seconds", ".1f"), ("tokens_per_s", "tokens/s", ",.0f"),
                          ("ngram_acted", "cache acts", ".2%"), ("ngram_hint_right", "hint right", ".1%"),
                          ("compile_seconds", "compile s", ".1f")]
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if not fmt else "---:" for _, _, fmt in columns) + "|"
    lines = [head, rule]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key, "")
            cells.append(format(v, fmt) if fmt and isinstance(v, (int, float)) and v == v else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def git_hash() -> str:
    root = Path(evalkit.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def versions() -> dict:
    found = {"python": sys.version.split()[0], "evalkit": evalkit.__version__, "platform": platform.platform()}
    import torch

    found |= {"torch": torch.__version__, "numpy": np.__version__}  # torch's carries its CUDA build tag
    for name in ("numba", "sentencepiece", "peft"):
        found[name] = dist_version(name)  # metadata, not import: importing peft pulls transformers (~10 s)
    return found | accelerator_versions()


def dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def accelerator_versions() -> dict:
    """GPU name, CUDA, cuDNN, NCCL and flash-attn versions; None for each one absent."""
    import torch

    cuda = torch.cuda.is_available()
    nccl = None
    if cuda and torch.distributed.is_available() and torch.distributed.is_nccl_available():
        v = torch.cuda.nccl.version()
        nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return {"device_name": torch.cuda.get_device_name() if cuda else None,
            "device_count": torch.cuda.device_count() if cuda else 0,
            "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None,
            "nccl": nccl, "flash_attn": flash_attn_version()}


def flash_attn_version() -> str | None:
    """flash-attn's version, FA3's interface first (the one evalkit.model.gpt prefers)."""
    for dist_name in ("flash_attn_3", "flash-attn-3", "flash_attn", "flash-attn"):
        if (v := dist_version(dist_name)) is not None:
            return f"{dist_name.replace('-', '_')} {v}"
    return None


def provenance(**extra) -> dict:
    """What a result needs to be reproduced: versions, git hash, and the caller's fields
    (artifact and data SHA-256, seed, command line)."""
    return {"versions": versions(), "git": git_hash(), "argv": sys.argv, **extra}


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj)}")


def write_json(path: str | Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
