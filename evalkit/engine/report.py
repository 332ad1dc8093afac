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
    for name in ("torch", "numpy", "numba", "sentencepiece", "peft"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


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
