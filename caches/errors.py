"""Errors of the caches package (plain ValueErrors: the package must not import evalkit)."""


class CacheSpecError(ValueError):
    """A malformed ``--ngram`` spec; the one-line message names the key and the accepted form."""


class CacheInputError(ValueError):
    """Bad data handed to a cache: token ids out of range, a position learned twice, ..."""
