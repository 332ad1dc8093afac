"""Score-first exact n-gram caches (pure NumPy + Numba; imports neither torch nor evalkit)."""
from .errors import CacheInputError, CacheSpecError
from .mixer import NgramMixer, parse_ngram_spec
from .store import NgramStore

__all__ = ["CacheInputError", "CacheSpecError", "NgramMixer", "NgramStore", "parse_ngram_spec"]
