"""ILLEGAL (rule C4): score twice and keep the lower NLL of the two passes.

Public case: PR #568 / #573 reported the minimum NLL over TTT epochs; two-pass n-gram
rescoring (PR #846, #870, #959) drove scores towards 0 bpb. Pass 1 here is the sliding
plan, pass 2 the flat plan; wherever pass 2 is better the strategy scores the position
again. The engine's ledger refuses the second score, and the audit's ledger check FAILS it.
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.strategies.sliding import Sliding
from evalkit.engine.windows import plan_flat


class MinNllTwoPasses(Sliding):
    name = "gallery:min-nll"

    def run(self, ctx) -> None:
        super().run(ctx)  # pass 1
        with torch.inference_mode():
            for w in plan_flat(ctx.data.n_tokens, self.opts.seq_len):
                logp = ctx.log_probs(ctx.inputs(w.start, w.end)[None])[0]  # (T, V)
                pos = np.arange(w.start, w.end, dtype=np.int64)
                targets = torch.from_numpy(ctx.data.tokens[pos].astype(np.int64))
                nll2 = -logp.gather(1, targets[:, None])[:, 0].double().numpy()
                better = nll2 < ctx.ledger.nll[pos]
                ctx.score(pos[better], logp[torch.from_numpy(better)])  # rescoring: the ledger refuses
