"""ILLEGAL (rules C1, C3): per-document TTT whose n-gram cache reads contexts across a BOS.

Found by evalkit's own audit (`--self-test` on a trained sp8192 model and FineWeb): TTT
scores documents longest first, side by side in batches, so a document is often scored
before the one in front of it. A cache context that runs back across the BOS then reads
the tail of that earlier document before it is scored, and the first targets' scores
depend on it. Sliding windows score in stream order, where the same contexts are legal;
evalkit's engine keeps a cache's contexts inside their document for any strategy that does
not (Strategy.scores_in_stream_order). This entry claims stream order falsely. The suffix
check catches it (replacing every document's second half moves the next documents' first
scores, fixed earlier); single-target and whole-document causality runs may miss it.
"""
from __future__ import annotations

from caches.mixer import parse_ngram_spec
from evalkit.strategies.ttt import TTT


class CrossDocCacheTTT(TTT):
    name = "gallery:cross-doc-cache-ttt"
    scores_in_stream_order = True  # false: the longest-first queue is not stream order

    def run(self, ctx) -> None:
        ctx.mixer = parse_ngram_spec(ctx.model.cfg.vocab_size, "mix:orders=2-4")
        ctx.mixer.bind(ctx.data.tokens)  # contexts over the whole stream, as for sliding
        super().run(ctx)
