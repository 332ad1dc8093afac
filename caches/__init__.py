"""Score-first exact n-gram caches (pure NumPy + Numba; imports neither torch nor evalkit)."""
from ._numba_cache import drop_stale_numba_cache

drop_stale_numba_cache()  # before the kernels load from it

from .errors import CacheInputError, CacheSpecError  # noqa: E402
from .mixer import NgramMixer, parse_ngram_spec  # noqa: E402
from .store import NgramStore  # noqa: E402

__all__ = ["CacheInputError", "CacheSpecError", "NgramMixer", "NgramStore", "parse_ngram_spec"]
