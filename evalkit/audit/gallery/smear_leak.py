"""ILLEGAL (rule C10): a smear layer that leaks across BOS while claiming document isolation.

Public case: SmearGate added the previous token's embedding to each position; at a BOS the
"previous token" was the last token of the previous document (fixed in the #1855 record
with a not-BOS mask). This strategy runs the doc-isolated sliding plan and smears 0.5 x the
previous token's embedding into every input, BOS included, so each document sees the end
of the one before. The audit's document-isolation check FAILS it.
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.strategies.sliding import Sliding
from evalkit.engine.windows import plan_doc_isolated


class LeakySmear(Sliding):
    name = "gallery:smear-leak"
    claims_doc_isolation = True

    @property
    def label(self) -> str:
        return self.name + "(doc)"

    def run(self, ctx) -> None:
        data, o = ctx.data, self.opts
        windows = plan_doc_isolated(data.doc_starts, data.n_tokens, o.seq_len, o.stride)
        prev: dict[str, torch.Tensor] = {}

        def smear(mod, _inp, out):  # the legal version multiplies by (input != BOS)
            return out + 0.5 * mod.weight[prev["ids"]].to(out.dtype)

        handle = ctx.model.tok_emb.register_forward_hook(smear)
        try:
            with torch.inference_mode():
                for i in range(0, len(windows), o.batch_windows):
                    ctx.after_scoring(self._batch(ctx, windows[i:i + o.batch_windows], prev))
        finally:
            handle.remove()

    @staticmethod
    def _batch(ctx, batch, prev) -> np.ndarray:
        T = max(w.length for w in batch)
        idx = torch.zeros((len(batch), T), dtype=torch.long)
        before = torch.zeros((len(batch), T), dtype=torch.long)  # token preceding each input
        for j, w in enumerate(batch):
            seq = torch.from_numpy(ctx.data.tokens[max(w.start - 2, 0):w.end - 1].astype(np.int64))
            idx[j, :w.length] = seq[-w.length:]
            before[j, :w.length] = seq[:-1] if w.start >= 2 else torch.cat([seq[:1], seq[:-1]])
        prev["ids"] = before.to(ctx.device)
        logp = ctx.log_probs(idx.to(ctx.device))
        rows = torch.cat([logp[j, w.score_from - w.start:w.length] for j, w in enumerate(batch)])
        positions = np.concatenate([np.arange(w.score_from, w.end, dtype=np.int64) for w in batch])
        ctx.score(positions, rows)
        return positions
