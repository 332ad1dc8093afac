"""Optional architecture features of the parameter-golf records (openai/parameter-golf PRs).

Each is switched on by a `GPTConfig` flag (default off) and used by evalkit/model/gpt.py in
the order the forward pass applies them. All are causal: position t reads tokens <= t.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BOS_ID = 1  # evalkit.data.BOS_ID; repeated here so the model does not import the data layer


class Linear(nn.Linear):
    """A bias-free linear layer that casts its weight to the input dtype (bf16 autocast
    friendly) and adds an optional low-rank adapter output (test-time training). The
    trainer's quantization-aware training sets `fake_quant` (weight -> STE-rounded weight)."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        self.lora: nn.Module | None = None
        self.fake_quant = None  # Callable[[Tensor], Tensor] | None

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.fake_quant is None else self.fake_quant(self.weight)
        y = F.linear(x, w.to(x.dtype))
        if self.lora is not None:
            y = y + self.lora(x)
        return y


class BigramHash(nn.Module):
    """A hashed embedding of (previous token, token) added to the token embedding (PR #198):
    cheap bigram statistics without a vocab^2 table. Position 0, BOS itself and the
    token right after BOS use bucket 0, so no information crosses a document start."""

    def __init__(self, vocab_size: int, buckets: int, dim: int, model_dim: int):
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.proj = Linear(dim, model_dim, zero_init=True)  # starts as a no-op

    def bucket(self, idx: Tensor) -> Tensor:
        prev = F.pad(idx[:, :-1], (1, 0), value=BOS_ID).long()
        h = (prev * 36313) ^ (idx.long() * 27191)  # two odd multipliers: a cheap mixing hash
        h = 1 + h % (self.buckets - 1)  # bucket 0 is reserved for "no previous token"
        return torch.where((prev == BOS_ID) | (idx == BOS_ID), torch.zeros_like(h), h)

    def forward(self, idx: Tensor) -> Tensor:
        return self.proj(self.embed(self.bucket(idx)))  # (B, T, C)


class SmearGate(nn.Module):
    """x_t <- x_t + g_t * x_{t-1}: a one-token causal mix at the embedding (PR #198).

    window == 0: g is a learned per-channel sigmoid gate (PR #198/#372/#451/#810).
    window == k > 0: g is a scalar per position computed from x_t's first k channels
    (PR #1938's 12-wide gate input). The mix is masked where x_t is BOS, so a document
    never reads the previous document's last token (legality C10; the #1855 fix)."""

    def __init__(self, model_dim: int, window: int = 0):
        super().__init__()
        self.window = window
        if window > 0:
            self.gate = nn.Parameter(torch.zeros(1, window))  # sigmoid(0)=0.5 times lam=0 -> off
            self.lam = nn.Parameter(torch.zeros(1))
        else:
            self.gate = nn.Parameter(torch.full((model_dim,), -3.0))  # sigmoid(-3) ~ 0.05: mostly off

    def forward(self, x: Tensor, idx: Tensor) -> Tensor:
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))  # (B, T, C), zero before position 0
        if self.window > 0:
            g = torch.sigmoid(x[..., : self.window] @ self.gate.to(x.dtype).T) * self.lam.to(x.dtype)  # (B, T, 1)
        else:
            g = torch.sigmoid(self.gate.to(x.dtype))  # (C,)
        keep = (idx != BOS_ID).to(x.dtype)[..., None]  # (B, T, 1)
        return x + keep * g * prev


class PreEnrich(nn.Module):
    """A residual GELU MLP on the embeddings before the first block (PR #810: 512->768->512)."""

    def __init__(self, model_dim: int, hidden: int):
        super().__init__()
        self.fc = Linear(model_dim, hidden)
        self.proj = Linear(hidden, model_dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(F.gelu(self.fc(x)))


def exclusive_self_attention(y: Tensor, v: Tensor) -> Tensor:
    """XSA (PR #372): remove from each head's output its component along the token's own
    value vector, so attention only adds information from other tokens.
    y: (B, H, T, hd), v: (B, Hkv, T, hd) -> (B, H, T, hd), orthogonal to v per token."""
    v = v.repeat_interleave(y.size(1) // v.size(1), dim=1)  # GQA: each query head's value head
    vn = F.normalize(v, dim=-1)
    return y - (y * vn).sum(-1, keepdim=True) * vn


def activation(name: str, x: Tensor) -> Tensor:
    """MLP nonlinearity: relu^2 (baseline) or leaky_relu(0.5)^2 (PR #1938)."""
    if name == "relu2":
        return torch.relu(x).square()
    if name == "leaky_relu2":
        return F.leaky_relu(x, 0.5).square()
    raise ValueError(f"unknown mlp_act {name!r}; use relu2 or leaky_relu2")


def rope_base(base: float, rot_dims: int, seq_len: int, train_seq_len: int, ntk: bool) -> float:
    """NTK-aware RoPE (PR #198): beyond the training length, stretch the base so the lowest
    frequencies interpolate instead of extrapolating."""
    if not ntk or seq_len <= train_seq_len or rot_dims <= 2:
        return base
    return base * (seq_len / train_seq_len) ** (rot_dims / (rot_dims - 2))


def layer_order(num_layers: int, recur_start: int, recur_end: int, recur_times: int) -> list[int]:
    """Physical block index of each virtual layer: depth recurrence (PR #1938) runs blocks
    recur_start..recur_end (inclusive) recur_times times, e.g. 3-5 twice:
    0 1 2 3 4 5 3 4 5 6 ... Without recurrence, 0..num_layers-1."""
    order = list(range(num_layers))
    if recur_times > 1:
        if not 0 <= recur_start <= recur_end < num_layers:
            raise ValueError(f"recurrence {recur_start}-{recur_end} outside 0..{num_layers - 1}")
        loop = list(range(recur_start, recur_end + 1))
        order = order[: recur_end + 1] + loop * (recur_times - 1) + order[recur_end + 1 :]
    return order
