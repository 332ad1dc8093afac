"""ILLEGAL (rule C2): a hashed-bucket count-ratio n-gram cache mixed into the model.

Public case: openai/parameter-golf PR #886, #1147, #978 scored
count(bucket(ctx, x_t)) / count(bucket(ctx)). Buckets collide, so over the whole alphabet
these "probabilities" summed to ~277-1000. The audit's normalization check sums the
strategy's full distribution and FAILS it. The mixer itself is the fixture in caches/illegal.py.
"""
from __future__ import annotations

from caches.illegal import IllegalHashedRatioMixer
from evalkit.audit.gallery.mixing import SlidingWithMixer


class ExposedHashedRatioMixer(IllegalHashedRatioMixer):
    """The fixture with its own "distribution" (the count ratios alone) exposed to the audit."""

    def own_distribution(self, position: int):
        import numpy as np

        return np.log(np.maximum(self._ratios(int(position)), 1e-300))


class HashedRatio(SlidingWithMixer):
    name = "gallery:hashed-ratio"

    def make_mixer(self, ctx) -> IllegalHashedRatioMixer:
        return ExposedHashedRatioMixer(ctx.model.cfg.vocab_size)


class HashedRatioBigBatch(HashedRatio):
    """The same cache updated once per 256 windows, as its public author ran it: on a short
    audit stream the whole stream is one batch and the cache never acts, so the audit must
    grow the stream until the cache has learned several times."""

    name = "gallery:hashed-ratio-256"

    def __init__(self, opts):
        super().__init__(opts)
        self.opts = type(opts)(**{**vars(opts), "batch_windows": 256})
