"""The GPT that evalkit scores and the trainer trains: the parameter-golf baseline.

One readable file, top to bottom: config, attention, MLP, block, GPT. The baseline is the
openai/parameter-golf `train_gpt.py` model (GQA, RoPE, relu^2 MLP, RMSNorm, tied
embeddings, U-Net skips, resid mix, q-gain, logit softcap); parameter names match that
script's state dict so its int8 exports load here (see evalkit/baseline.py).

Test-time training hooks: every `Linear` (and the tied head) has an optional `lora`
attribute; when set, its output is added to the layer's. The engine's TTT strategy sets
them; training and plain scoring leave them None.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evalkit.model import layers
from evalkit.model.layers import Linear

try:  # flash-attn is optional and CUDA-only; SDPA is the portable fallback.
    from flash_attn_interface import flash_attn_func  # type: ignore  # flash-attn 3 (Hopper), #198
except ImportError:  # pragma: no cover - depends on the machine
    try:
        from flash_attn import flash_attn_func  # type: ignore
    except ImportError:  # pragma: no cover - depends on the machine
        flash_attn_func = None


@dataclass
class GPTConfig:
    vocab_size: int = 1024  # the challenge's sp1024 tokenizer
    num_layers: int = 9  # baseline depth; records use 10-11
    model_dim: int = 512  # residual width d
    num_heads: int = 8  # query heads; head_dim = model_dim / num_heads
    num_kv_heads: int = 4  # GQA: key/value heads shared by num_heads/num_kv_heads queries
    mlp_mult: float = 2.0  # MLP hidden = mlp_mult * model_dim (baseline 2x, records 3x)
    tie_embeddings: bool = True  # head reuses tok_emb: saves vocab*d parameters
    rope_base: float = 10000.0  # RoPE frequency base
    logit_softcap: float = 30.0  # logits = c * tanh(logits / c) keeps early training stable
    qk_gain_init: float = 1.5  # per-head multiplier on normalized queries (learned)
    tied_embed_init_std: float = 0.005  # small init for the shared embedding/head matrix
    train_seq_len: int = 1024  # the context the model was trained on; default eval seq_len
    # Record features (openai/parameter-golf PRs); all off by default = the baseline above.
    bigram_buckets: int = 0  # BigramHash buckets, #198 (2048), #451 (10240); 0 = off
    bigram_dim: int = 128  # BigramHash embedding width before its projection to d (#372: 64)
    smear_gate: bool = False  # SmearGate one-token mix at the embedding, #198; never across BOS
    smear_window: int = 0  # >0: scalar gate from the first k channels of x_t (#1938: 12)
    pre_enrich_hidden: int = 0  # GELU MLP d->h->d before the blocks, #810 (768); 0 = off
    rope_dims: int = 0  # partial RoPE: rotate only the first k dims of each head, #1938 (16); 0 = all
    rope_ntk: bool = False  # NTK-aware RoPE base scaling beyond train_seq_len, #198
    xsa_last_n: int = 0  # exclusive self-attention on the last n layers, #372/#810 (4)
    gated_attn: bool = False  # per-head sigmoid output gate from x, #1938
    mlp_act: str = "relu2"  # "relu2" (baseline) or "leaky_relu2" (#1938: LeakyReLU(0.5)^2)
    recur_start: int = 0  # depth recurrence: blocks recur_start..recur_end (inclusive)...
    recur_end: int = 0  # ...are run recur_times times in a row, #1938 (3-5, twice)
    recur_times: int = 1  # 1 = no recurrence
    skip_from_layer: int = 0  # U-Net skips feed only decoder blocks with index >= this (#1938: 8)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_mult * self.model_dim))


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """RoPE tables over the first `dims` dims of a head; not part of the state dict.

    Every number here comes from configured lengths, never from the tensor in hand: the
    NTK base (with `ntk`) from `context_len` (the evaluation window, `GPT.set_context_len`)
    against train_seq_len, and the tables are built for a length rounded up to a multiple
    of 64 and sliced, so a position's angle does not depend on how far a batch is padded."""

    def __init__(self, dims: int, base: float, train_seq_len: int = 0, ntk: bool = False):
        super().__init__()
        self.dims, self.base, self.train_seq_len, self.ntk = dims, base, train_seq_len, ntk
        self.context_len = train_seq_len  # the configured window; only NTK scaling reads it
        self._cache: tuple[int, int, torch.device, Tensor, Tensor] | None = None  # (context, rows, device, cos, sin)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        c = self._cache
        if c is None or c[0] != self.context_len or c[1] < seq_len or c[2] != device:
            rows = -(-max(seq_len, self.context_len, 1) // 64) * 64
            # Built outside inference mode: a table made while scoring is reused by TTT's backward.
            with torch.inference_mode(False), torch.no_grad():
                base = layers.rope_base(self.base, self.dims, self.context_len, self.train_seq_len, self.ntk)
                inv_freq = 1.0 / (base ** (torch.arange(0, self.dims, 2, dtype=torch.float32) / self.dims))
                t = torch.arange(rows, device=device, dtype=torch.float32)
                freqs = torch.outer(t, inv_freq.to(device))  # (rows, dims/2)
                self._cache = c = (self.context_len, rows, device, freqs.cos()[None, None], freqs.sin()[None, None])
        return c[3][:, :, :seq_len].to(dtype), c[4][:, :, :seq_len].to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first 2 * cos.size(-1) dims of x; the rest pass through (partial RoPE)."""
    dims = 2 * cos.size(-1)
    half = dims // 2
    x1, x2, rest = x[..., :half], x[..., half:dims], x[..., dims:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


ATTN_BLOCK = 64  # CPU query block: a row's attention depends on its block index only


def flash_dtype(q: Tensor) -> torch.dtype | None:
    """The half dtype flash-attn would run in, or None (SDPA). Under autocast, q may arrive
    in float32 (norms are on autocast's fp32 list on some backends, and RoPE/q-gain then
    stay fp32): run flash in the autocast dtype, or its branch would silently never run."""
    if q.dtype in (torch.bfloat16, torch.float16):
        return q.dtype
    if torch.is_autocast_enabled(q.device.type):
        return torch.get_autocast_dtype(q.device.type)
    return None


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(B, H, T, hd) queries against (B, Hkv, T, hd) keys/values, causal.

    flash-attn when installed, on CUDA, in half precision; SDPA otherwise. On CPU the
    queries go in blocks of ATTN_BLOCK, block m against keys [0, (m+1) * ATTN_BLOCK): every
    shape a row meets depends on its position alone, so a window's scores are bitwise the
    same alone, right-padded or batched (one SDPA call over the padded length is not:
    its kernel splits rows by the total length)."""
    dtype = flash_dtype(q) if flash_attn_func is not None and q.is_cuda else None
    if dtype is not None:
        q, k, v = (t.transpose(1, 2).to(dtype) for t in (q, k, v))  # (B, T, H, hd) as flash-attn wants
        y = flash_attn_func(q, k, v, causal=True)
        return (y[0] if isinstance(y, tuple) else y).transpose(1, 2)  # FA3 also returns the LSE
    gqa = k.size(1) != q.size(1)
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    T, blk = q.size(2), ATTN_BLOCK
    P = -(-T // blk) * blk
    q, k, v = (F.pad(x, (0, 0, 0, P - T)) for x in (q, k, v))  # (B, *, P, hd); zero keys are never attended
    allowed = torch.ones(P, P, dtype=torch.bool, device=q.device).tril()  # (P, P) key j <= query i
    out = []
    for s in range(0, P, blk):
        e = s + blk
        out.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e],
                                                  attn_mask=allowed[s:e, :e], enable_gqa=gqa))
    return torch.cat(out, dim=2)[:, :, :T]  # (B, H, T, hd)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, xsa: bool = False):
        super().__init__()
        if cfg.model_dim % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads or cfg.head_dim % 2:
            raise ValueError("model_dim/num_heads must be even and num_heads a multiple of num_kv_heads")
        if cfg.rope_dims % 2 or cfg.rope_dims > cfg.head_dim:
            raise ValueError(f"rope_dims {cfg.rope_dims} must be even and <= head_dim {cfg.head_dim}")
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = Linear(cfg.model_dim, cfg.model_dim)
        self.c_k = Linear(cfg.model_dim, kv_dim)
        self.c_v = Linear(cfg.model_dim, kv_dim)
        self.proj = Linear(cfg.model_dim, cfg.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(cfg.rope_dims or cfg.head_dim, cfg.rope_base, cfg.train_seq_len, cfg.rope_ntk)
        self.xsa = xsa
        self.gate = Linear(cfg.model_dim, cfg.num_heads, zero_init=True) if cfg.gated_attn else None

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        q, k = rms_norm(q), rms_norm(k)  # QK-norm: attention logits stay bounded
        cos, sin = self.rotary(T, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = causal_attention(q, k, v)  # (B, H, T, hd)
        if self.xsa:
            y = layers.exclusive_self_attention(y, v)
        if self.gate is not None:  # sigmoid(0) = 0.5 at init: every head half open
            y = y * torch.sigmoid(self.gate(x)).transpose(1, 2)[..., None]
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """relu^2 MLP (modded-nanogpt): cheap and better than GELU at this size."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.act = cfg.mlp_act
        self.fc = Linear(cfg.model_dim, cfg.mlp_hidden)
        self.proj = Linear(cfg.mlp_hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(layers.activation(self.act, self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, index: int = 0):
        super().__init__()
        d = cfg.model_dim
        self.attn = CausalSelfAttention(cfg, xsa=index >= cfg.num_layers - cfg.xsa_last_n)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        # resid_mix[0] weighs the running residual, resid_mix[1] the embedding x0.
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        d = cfg.model_dim
        self.bigram = (layers.BigramHash(cfg.vocab_size, cfg.bigram_buckets, cfg.bigram_dim, d)
                       if cfg.bigram_buckets else None)
        self.smear = layers.SmearGate(d, cfg.smear_window) if cfg.smear_gate else None
        self.enrich = layers.PreEnrich(d, cfg.pre_enrich_hidden) if cfg.pre_enrich_hidden else None
        # Virtual layers: physical blocks in run order (depth recurrence repeats some).
        self.order = layers.layer_order(cfg.num_layers, cfg.recur_start, cfg.recur_end, cfg.recur_times)
        self.num_encoder_layers = len(self.order) // 2
        self.num_decoder_layers = len(self.order) - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, d))
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.num_layers)])
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        self.head_lora: nn.Module | None = None  # TTT adapter on the (possibly tied) head
        self._init_weights()

    def _init_weights(self) -> None:
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, std=self.cfg.tied_embed_init_std)
        for m in self.modules():
            if isinstance(m, Linear) and m.zero_init:
                nn.init.zeros_(m.weight)

    def hidden(self, idx: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, C) final normalized hidden states."""
        return self._trunk(idx)[:, : idx.size(1)]

    def _trunk(self, idx: Tensor) -> Tensor:
        """(B, T) ids -> (B, P, C) hidden states, P = T on CUDA, T rounded up to ATTN_BLOCK
        on CPU. Right padding never reaches earlier positions (causal); it makes every
        internal shape a multiple of the block, so no row lands in a kernel's remainder
        path (vectorized-loop tails, single-row GEMV) whose rounding differs: a window's
        scores are then bitwise the same alone, right-padded or batched."""
        if not idx.is_cuda:
            idx = F.pad(idx, (0, -idx.size(1) % ATTN_BLOCK))
        x = self.tok_emb(idx)  # (B, P, C)
        if self.bigram is not None:  # hashed (previous, current) token embedding
            x = x + self.bigram(idx)
        x = rms_norm(x)
        if self.smear is not None:  # one-token causal mix, masked at BOS
            x = self.smear(x, idx)
        if self.enrich is not None:  # GELU block before the transformer
            x = self.enrich(x)
        x0, skips = x, []
        for j in self.order[: self.num_encoder_layers]:
            x = self.blocks[j](x, x0)
            skips.append(x)
        for i, j in enumerate(self.order[self.num_encoder_layers :]):
            if skips:  # U-Net: decoder layer i reads encoder layer (n_enc - 1 - i)...
                skip = skips.pop()
                if j >= self.cfg.skip_from_layer:  # ...if its block is past skip_from_layer
                    x = x + self.skip_weights[i].to(x.dtype) * skip
            x = self.blocks[j](x, x0)
        return rms_norm(x)

    def head(self, h: Tensor, fp32: bool = False) -> Tensor:
        """(..., C) hidden -> (..., V) soft-capped logits. `fp32`: matmul and softcap in
        float32 even under autocast (scoring: bf16 logits carry ~0.1-nat steps at |z| ~ 20)."""
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        if fp32:
            h = h.float()
        with torch.autocast(h.device.type, enabled=False) if fp32 else contextlib.nullcontext():
            logits = F.linear(h, w.to(h.dtype))
            if self.head_lora is not None:
                logits = logits + self.head_lora(h).to(logits.dtype)
            c = self.cfg.logit_softcap
            return c * torch.tanh(logits / c)

    def set_context_len(self, n: int) -> None:
        """The configured evaluation window (--seq-len, TTT's context): what NTK RoPE scales
        from, so a score never depends on how long the padded batch happens to be."""
        for block in self.blocks:
            block.attn.rotary.context_len = int(n)

    def forward(self, idx: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, V) logits (float32 on CPU; autocast dtype on CUDA)."""
        return self.head(self._trunk(idx))[:, : idx.size(1)]

    def log_probs(self, idx: Tensor, rows: Tensor | None = None) -> Tensor:
        """(B, T) ids -> float32 log-softmax from an fp32 head: (B, T, V), or (n, V) at
        `rows`, (n,) flat indices into B*T. Only the rows asked for pay for the head and
        the softmax: sliding scores 64 of 2048 positions, and at V=8192 the head is the
        biggest matmul of the model. On CPU the head's row count is padded to ATTN_BLOCK
        (as `_trunk` pads T) so a row's logits never depend on how many rows share the call."""
        T = idx.size(1)
        h = self._trunk(idx)  # (B, P, C)
        if rows is None:
            return torch.log_softmax(self.head(h, fp32=True), dim=-1)[:, :T]
        h = h[:, :T].reshape(-1, h.size(-1)).index_select(0, rows)  # (n, C)
        n = h.size(0)
        if not h.is_cuda:
            h = F.pad(h, (0, 0, 0, -n % ATTN_BLOCK))
        return torch.log_softmax(self.head(h, fp32=True), dim=-1)[:n]

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy in nats (float32 softmax)."""
        logits = self(idx)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def estimate_forward_flops(cfg: GPTConfig, tokens: int, context: int) -> float:
    """Forward FLOPs for `tokens` positions at average attention span `context`:
    2 FLOPs per multiply-add in every matmul, plus the attention score/value products.
    A config that knows better (a --model module's, evalkit/model/user.py) gives its own."""
    if hasattr(cfg, "forward_flops"):
        return cfg.forward_flops(tokens, context)
    d, L = cfg.model_dim, cfg.num_layers
    kv = cfg.num_kv_heads * cfg.head_dim
    per_layer = 2 * (d * d * 2 + d * kv * 2 + 2 * d * cfg.mlp_hidden) + 4 * d * context
    return float(tokens) * (L * per_layer + 2 * d * cfg.vocab_size)

