"""Finished ablation runs on disk, so an interrupted grid restarts where it stopped.

An entry is DIR/cache/<key>.json, key = SHA-256 of (artifact SHA-256, data SHA-256,
byte-count SHA-256, canonical JSON of the run's config, SHA-256 of the code that computes
the numbers: every .py file of evalkit/ and caches/). A changed artifact, split or line
of scoring code therefore looks up a different file (a version string would not move
when the code does); an entry whose stored fields do
not match what was asked for (copied from elsewhere, edited, truncated) is refused and
the run is recomputed, never silently reused.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import caches
import evalkit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunIdentity:
    """Everything a run's numbers depend on."""

    artifact_sha256: str
    data_sha256: str
    bytes_sha256: str  # target byte counts: the tokenizer table or a sidecar
    run_config: dict

    def fields(self) -> dict:
        return {"artifact_sha256": self.artifact_sha256, "data_sha256": self.data_sha256,
                "bytes_sha256": self.bytes_sha256, "run_config": self.run_config, "code_sha256": code_sha256()}

    def key(self) -> str:
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def tree_sha256(roots: dict[str, Path]) -> str:
    """SHA-256 over every .py file under each root (name/relative path, then content), in sorted order."""
    h = hashlib.sha256()
    for name, root in sorted(roots.items()):
        for f in sorted(Path(root).rglob("*.py")):
            h.update(f"{name}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_sha256() -> str:
    """The source of the packages that produce a run's numbers, as one hash."""
    return tree_sha256({p.__name__: Path(p.__file__).resolve().parent for p in (evalkit, caches)})


def bytes_sha256(target_bytes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(target_bytes, dtype=np.int64).tobytes()).hexdigest()


def entry_path(cache_dir: Path, ident: RunIdentity) -> Path:
    return Path(cache_dir) / f"{ident.key()}.json"


def save(cache_dir: Path, ident: RunIdentity, payload: dict) -> Path:
    """Write atomically (temp file + rename): a run killed mid-write leaves no half entry."""
    path = entry_path(cache_dir, ident)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({**ident.fields(), **payload}, default=_plain) + "\n")
    os.replace(tmp, path)
    return path


def load(cache_dir: Path, ident: RunIdentity, n_docs: int) -> dict | None:
    """The stored payload, or None when absent or refused (with a warning saying why)."""
    path = entry_path(cache_dir, ident)
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("refusing cache entry %s: unreadable (%s); recomputing", path, e)
        return None
    for name, want in ident.fields().items():
        if entry.get(name) != want:
            log.warning("refusing stale cache entry %s: its %s differs from this run's; recomputing", path, name)
            return None
    if any(len(entry.get(k, ())) != n_docs for k in ("per_doc_nll", "per_doc_bytes", "per_doc_tokens")):
        log.warning("refusing cache entry %s: per-document arrays do not have %d documents; recomputing",
                    path, n_docs)
        return None
    return entry


def _plain(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj)}")
