"""A plugin that needs an internal activation: a per-position temperature from the norm of
the model's final hidden state, read without hooks.

    P=examples/plugins/hidden_temperature.py:HiddenTemperature
    python -m evalkit.score model.ptz --val ... --tokenizer ... --strategy sliding --plugin $P
    python -m evalkit.audit model.ptz --val ... --tokenizer ... --plugin $P

The activation comes from calling the model's parts on the inputs `ctx.inputs` gives
(`hidden`, then `head`), at exactly the rows that are scored; the temperature depends on
the prefix only and the result is a full log-softmax, so the audit passes it.
"""
import numpy as np
import torch

from evalkit.engine.windows import plan_sliding
from evalkit.strategies.registry import Strategy


class HiddenTemperature(Strategy):
    name = "hidden-temperature"
    fixed_model = True  # reads the model only: ablate may share one pass among mixers

    def run(self, ctx) -> None:
        windows = plan_sliding(ctx.data.n_tokens, self.opts.seq_len, self.opts.stride)
        with torch.inference_mode():
            for w in windows:
                idx = ctx.inputs(w.start, w.end)[None]  # (1, T): the prefix only
                h = ctx.model.hidden(idx)[0, w.score_from - w.start:]  # (S, d) at the scored rows
                temp = 1.0 + 0.1 * torch.tanh(h.norm(dim=-1, keepdim=True) - h.size(-1) ** 0.5)  # (S, 1)
                logp = torch.log_softmax(ctx.model.head(h).float() / temp, dim=-1)  # (S, V), sums to 1
                positions = np.arange(w.score_from, w.end, dtype=np.int64)
                ctx.score(positions, logp)
                ctx.after_scoring(positions)
