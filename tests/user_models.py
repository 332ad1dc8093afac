"""`--model` factories for tests/test_user_model.py: a small causal module that is not
evalkit's GPT (plain nn.Linear layers named like the challenge script's), and broken ones."""
from __future__ import annotations

import torch
from torch import nn


class Causal(nn.Module):
    """Embedding -> running mean over the prefix (causal) -> attn.c_q/attn.c_v -> lm_head."""

    def __init__(self, V: int = 1024, d: int = 32, reverse: bool = False):
        super().__init__()
        self.train_seq_len, self.reverse = 64, reverse
        self.emb = nn.Embedding(V, d)
        self.attn = nn.Module()
        self.attn.c_q, self.attn.c_v = nn.Linear(d, d), nn.Linear(d, d)
        self.lm_head = nn.Linear(d, V)

    def forward(self, idx):
        x = self.emb(idx)  # (B, T, d)
        if self.reverse:  # reads the future: breaks the contract
            x = x.flip(1)
        steps = torch.arange(1, x.size(1) + 1, device=x.device)[None, :, None]
        x = x + x.cumsum(1) / steps  # running mean of the prefix
        if self.reverse:
            x = x.flip(1)
        x = x + self.attn.c_v(torch.tanh(self.attn.c_q(x)))
        return self.lm_head(x)  # (B, T, V)


def _seeded(**kw) -> Causal:
    torch.manual_seed(0)
    return Causal(**kw)


def causal(artifact_path, device):
    model = _seeded()
    model.load_state_dict(torch.load(artifact_path, weights_only=True))
    return model


def peeking(artifact_path, device):
    return _seeded(reverse=True)


def flat_logits(artifact_path, device):
    class Flat(Causal):
        def forward(self, idx):
            return super().forward(idx)[..., 0]  # (B, T): not logits
    torch.manual_seed(0)
    return Flat()


def no_seq_len(artifact_path, device):
    model = _seeded()
    del model.train_seq_len
    return model


def raises(artifact_path, device):
    raise FileNotFoundError(f"no export at {artifact_path}")
