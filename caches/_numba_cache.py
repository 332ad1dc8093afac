"""Keep Numba's on-disk cache honest across edits of the kernels' helper modules.

Numba keys a cached function by its own file's timestamp only. ``advance_kernel`` (in
kernels.py) inlines the probing and packing primitives of table.py, so an edit of table.py
alone left the old machine code in use: measured, not hypothetical. So the package stamps
the cache directory with a digest of every module in it and empties the cache when the
digest changes. Only the default location (``caches/__pycache__``) is managed; with
NUMBA_CACHE_DIR set, clearing it after an edit is the user's job.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(HERE.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def drop_stale_numba_cache() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    cache = HERE / "__pycache__"
    stamp = cache / "numba_sources.sha256"
    digest = sources_digest()
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    try:
        for path in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            try:
                path.unlink()
            except FileNotFoundError:  # another process (torchrun rank) removed it first
                pass
        cache.mkdir(exist_ok=True)
        tmp = cache / f"numba_sources.{os.getpid()}.tmp"
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    except OSError:  # read-only install: Numba then compiles in memory or uses its own dir
        pass
