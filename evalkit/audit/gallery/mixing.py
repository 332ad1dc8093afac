"""The gallery's n-gram-style entries: sliding windows scored through an (illegal) mixer."""
from __future__ import annotations

from evalkit.strategies.sliding import Sliding


class SlidingWithMixer(Sliding):
    """`sliding`, with the mixer from `make_mixer` installed in the context before it runs."""

    def make_mixer(self, ctx):
        raise NotImplementedError

    def run(self, ctx) -> None:
        ctx.mixer = self.make_mixer(ctx)
        ctx.mixer.bind(ctx.data.tokens)
        super().run(ctx)
