"""A challenge entry in miniature: its own GPT, its own int6 export, its own eval loop.

Shaped like the parameter-golf records (one script, settings from environment variables,
train -> quantize -> compress -> reload -> evaluate), written for evalkit's examples from
the public descriptions of those records, small enough to train on a CPU in seconds. It
imports nothing from evalkit: it is what a reviewer receives. evalkit reaches it through
two short adapters beside it (evalkit_model.py for --model, evalkit_score_fn.py for
the black-box audit).

    TRAIN_FILES='data/*_train_*.bin' VAL_FILES='data/*_val_*.bin' TOKENIZER_PATH=tok.model \\
    ITERATIONS=200 NGRAM=hashed python examples/submission/train_gpt_mini.py

Evaluation (`eval_nll`): sliding windows of EVAL_SEQ_LEN advancing by EVAL_STRIDE, every
target scored once with as much left context as fits, optionally through an n-gram cache
over hashed contexts that learns a window's tokens after scoring them:
- NGRAM=hashed: the count-ratio cache of the disqualified records, p_ng(x_t) =
  count(bucket(ctx, x_t)) / count(bucket(ctx)) mixed in at the target only. Its
  "distribution" does not sum to 1 (rule C2): evalkit's black-box audit fails it.
- NGRAM=tilt: the normalized token tilt of the legal records: from the context only, a
  hint token h (the most frequent continuation) and p'(a) = p(a) e^{b[a=h]} / (1 + p(h)(e^b - 1)).
"""
from __future__ import annotations

import glob
import json
import lzma
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Hyperparameters:
    """Every setting from the environment, as the records' scripts take them."""

    def __init__(self) -> None:
        env = os.environ.get
        self.train_files = env("TRAIN_FILES", "")
        self.val_files = env("VAL_FILES", "")
        self.tokenizer_path = env("TOKENIZER_PATH", "")
        self.out = env("OUT", "final_model.int6.ptz")
        self.seed = int(env("SEED", 1337))
        self.vocab_size = int(env("VOCAB_SIZE", 1024))
        self.num_layers = int(env("NUM_LAYERS", 2))
        self.model_dim = int(env("MODEL_DIM", 64))
        self.num_heads = int(env("NUM_HEADS", 4))
        self.mlp_mult = int(env("MLP_MULT", 2))
        self.train_seq_len = int(env("TRAIN_SEQ_LEN", 128))
        self.iterations = int(env("ITERATIONS", 40))
        self.batch_seqs = int(env("BATCH_SEQS", 16))
        self.lr = float(env("LR", 3e-3))
        self.eval_seq_len = int(env("EVAL_SEQ_LEN", self.train_seq_len))
        self.eval_stride = int(env("EVAL_STRIDE", 64))
        self.eval_batch = int(env("EVAL_BATCH", 32))  # windows per forward
        self.ngram = env("NGRAM", "none")  # none | hashed | tilt
        self.ngram_orders = [int(o) for o in env("NGRAM_ORDERS", "2,3,4").split(",")]
        self.ngram_buckets = int(env("NGRAM_BUCKETS", 4096))  # power of two
        self.ngram_min_count = int(env("NGRAM_MIN_COUNT", 2))
        self.ngram_alpha = float(env("NGRAM_ALPHA", 0.4))  # hashed: weight of the cache
        self.tilt_beta = float(env("TILT_BETA", 1.5))  # tilt: boost of the hint
        self.tilt_threshold = float(env("TILT_THRESHOLD", 0.5))  # tilt: top count / context count


# -- data -------------------------------------------------------------------------------
def load_shard(path: str) -> np.ndarray:
    header = np.fromfile(path, dtype="<i4", count=256)
    if header[0] != 20240520 or header[1] != 1:
        raise ValueError(f"{path}: not a token shard")
    return np.fromfile(path, dtype="<u2", count=int(header[2]), offset=256 * 4)


def load_tokens(pattern: str) -> np.ndarray:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no shard matches {pattern}")
    return np.concatenate([load_shard(f) for f in files])


def byte_luts(tokenizer_path: str, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bytes of each piece without its leading space, whether it has one, whether it is
    a boundary): a target's bytes are base + (leading space and previous not a boundary)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    base = np.zeros(vocab_size, np.int64)
    space = np.zeros(vocab_size, bool)
    boundary = np.ones(vocab_size, bool)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        space[i] = piece.startswith("\u2581")
        base[i] = len(piece.lstrip("\u2581").encode())
    return base, space, boundary


def target_bytes(tokens: np.ndarray, luts) -> np.ndarray:
    base, space, boundary = luts
    t = tokens.astype(np.int64)
    return base[t[1:]] + (space[t[1:]] & ~boundary[t[:-1]])


# -- model ------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_q, self.c_k, self.c_v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, d = x.shape
        q, k, v = (m(x).view(B, T, self.heads, d // self.heads).transpose(1, 2) for m in (self.c_q, self.c_k, self.c_v))
        q, k = rope(F.rms_norm(q, (q.size(-1),)), cos, sin), rope(F.rms_norm(k, (k.size(-1),)), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp_mult: int):
        super().__init__()
        self.attn = CausalSelfAttention(d, heads)
        self.fc, self.out = nn.Linear(d, mlp_mult * d, bias=False), nn.Linear(mlp_mult * d, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(F.rms_norm(x, (x.size(-1),)), cos, sin)
        return x + self.out(torch.relu(self.fc(F.rms_norm(x, (x.size(-1),)))).square())


class GPT(nn.Module):
    def __init__(self, h: Hyperparameters):
        super().__init__()
        self.train_seq_len = h.train_seq_len
        self.tok_emb = nn.Embedding(h.vocab_size, h.model_dim)
        self.blocks = nn.ModuleList(Block(h.model_dim, h.num_heads, h.mlp_mult) for _ in range(h.num_layers))
        hd = h.model_dim // h.num_heads
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd), persistent=False)
        nn.init.normal_(self.tok_emb.weight, std=0.02)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, T, V) logits, or the mean loss when targets are given."""
        T = idx.size(1)
        freqs = torch.outer(torch.arange(T, device=idx.device).float(), self.inv_freq)
        cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]
        x = self.tok_emb(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = F.linear(F.rms_norm(x, (x.size(-1),)), self.tok_emb.weight)  # tied head
        logits = 30.0 * torch.tanh(logits / 30.0)  # soft cap
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def train(h: Hyperparameters, tokens: np.ndarray) -> GPT:
    torch.manual_seed(h.seed)
    model = GPT(h)
    opt = torch.optim.Adam(model.parameters(), lr=h.lr)
    rng = np.random.default_rng(h.seed)
    for step in range(h.iterations):
        starts = rng.integers(0, tokens.size - h.train_seq_len - 1, h.batch_seqs)
        chunk = torch.from_numpy(np.stack([tokens[s:s + h.train_seq_len + 1] for s in starts]).astype(np.int64))
        loss = model(chunk[:, :-1], chunk[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == h.iterations - 1:
            print(f"step {step} train_loss {loss.item():.4f}")
    return model.eval()


# -- export: int6 per-row, packed 4 values in 3 bytes, lzma ----------------------------
MAGIC = b"MINIGPT6"


def pack6(q: np.ndarray) -> bytes:
    """int values in [-32, 31] -> 6-bit fields, 4 per 3 bytes."""
    u = (q.astype(np.int16).ravel() + 32).astype(np.uint32)
    u = np.concatenate([u, np.zeros((-u.size) % 4, np.uint32)]).reshape(-1, 4)
    word = u[:, 0] | (u[:, 1] << 6) | (u[:, 2] << 12) | (u[:, 3] << 18)  # 24 bits
    return np.stack([word & 255, (word >> 8) & 255, word >> 16], axis=1).astype(np.uint8).tobytes()


def unpack6(buf: bytes, n: int) -> np.ndarray:
    b = np.frombuffer(buf, np.uint8).reshape(-1, 3).astype(np.uint32)
    word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    u = np.stack([(word >> s) & 63 for s in (0, 6, 12, 18)], axis=1).ravel()[:n]
    return u.astype(np.int16) - 32


def export(model: GPT, path: str) -> int:
    """Matrices as int6 with an fp16 scale per row; everything else fp16. Returns bytes."""
    manifest, blobs, offset = [], [], 0
    for name, t in model.state_dict().items():
        w = t.detach().float().cpu().numpy()
        if w.ndim == 2:
            scale = np.maximum(np.abs(w).max(axis=1), 1e-8) / 31.0
            scale = scale.astype(np.float16)
            q = np.clip(np.round(w / scale.astype(np.float32)[:, None]), -32, 31)
            parts = [scale.tobytes(), pack6(q)]
            kind = "int6"
        else:
            parts, kind = [w.astype(np.float16).tobytes()], "fp16"
        size = sum(len(p) for p in parts)
        manifest.append({"name": name, "shape": list(w.shape), "kind": kind, "offset": offset, "size": size})
        blobs += parts
        offset += size
    head = json.dumps(manifest).encode()
    raw = MAGIC + len(head).to_bytes(4, "little") + head + b"".join(blobs)
    data = lzma.compress(raw, preset=9)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def load_export(path: str, h: Hyperparameters | None = None) -> GPT:
    """The export back as a float32 GPT (the weights the score is computed from)."""
    with open(path, "rb") as f:
        raw = lzma.decompress(f.read())
    if raw[:8] != MAGIC:
        raise ValueError(f"{path}: not a {MAGIC.decode()} export")
    n = int.from_bytes(raw[8:12], "little")
    manifest, body = json.loads(raw[12:12 + n]), raw[12 + n:]
    state = {}
    for e in manifest:
        buf, shape = body[e["offset"]:e["offset"] + e["size"]], e["shape"]
        if e["kind"] == "int6":
            rows = shape[0]
            scale = np.frombuffer(buf[:2 * rows], np.float16).astype(np.float32)
            q = unpack6(buf[2 * rows:], int(np.prod(shape))).reshape(shape).astype(np.float32)
            state[e["name"]] = torch.from_numpy(q * scale[:, None])
        else:
            state[e["name"]] = torch.from_numpy(np.frombuffer(buf, np.float16).astype(np.float32).reshape(shape))
    h = h or Hyperparameters()
    emb = state["tok_emb.weight"].shape
    h.vocab_size, h.model_dim = emb
    h.num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    h.mlp_mult = state["blocks.0.fc.weight"].shape[0] // h.model_dim
    model = GPT(h)
    model.load_state_dict(state)
    return model.eval()


# -- evaluation -------------------------------------------------------------------------
def windows(n: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(first input, first scored target, end) per window over targets 1..n-1: the first
    window scores all it sees, each later one the next `stride` targets with up to seq_len
    tokens of context, so every target is scored once."""
    out, end = [], 1
    while end < n:
        new_end = min(n, 1 + seq_len) if not out else min(n, end + stride)
        out.append((max(0, new_end - 1 - seq_len), end, new_end))
        end = new_end
    return out


class HashedCache:
    """Count tables over hashed contexts, one set per stream (B streams side by side).
    Orders n use the n - 1 tokens before t; keys are XORs of token x multiplier products."""

    MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                     0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x27D4EB2F165667C5, 0x85EBCA77C2B2AE63],
                    dtype=np.uint64)

    def __init__(self, h: Hyperparameters, streams: np.ndarray):
        self.h, self.tok = h, streams.astype(np.int64)  # (B, n)
        B, K, M = streams.shape[0], len(h.ngram_orders), h.ngram_buckets
        self.ctx_key, self.full_key = self._keys(streams.astype(np.uint64), np.uint64(M - 1))  # (B, n, K)
        self.ctx = np.zeros((B, K, M), np.int32)
        self.full = np.zeros((B, K, M), np.int32)
        self.top_tok = np.zeros((B, K, M), np.int64)
        self.top_cnt = np.zeros((B, K, M), np.int32)
        self.b, self.o = np.arange(B)[:, None], np.arange(K)[None, :]

    def _keys(self, tok: np.ndarray, mask: np.uint64) -> tuple[np.ndarray, np.ndarray]:
        ctx, full = [], []
        with np.errstate(over="ignore"):
            for order in self.h.ngram_orders:
                c = np.zeros_like(tok)
                for j in range(1, order):  # token t - j, the stream's first token before the start
                    prev = np.concatenate([np.repeat(tok[:, :1], j, axis=1), tok[:, :-j]], axis=1)
                    c ^= prev * self.MULT[j]
                ctx.append(c & mask)
                full.append((c ^ (tok * self.MULT[0])) & mask)
        return np.stack(ctx, 2).astype(np.int64), np.stack(full, 2).astype(np.int64)

    def learn(self, t: int) -> None:
        b, o, ck, fk = self.b, self.o, self.ctx_key[:, t], self.full_key[:, t]  # (B, K) buckets
        self.ctx[b, o, ck] += 1
        self.full[b, o, fk] += 1
        c = self.full[b, o, fk]
        better = c > self.top_cnt[b, o, ck]
        self.top_cnt[b, o, ck] = np.where(better, c, self.top_cnt[b, o, ck])
        self.top_tok[b, o, ck] = np.where(better, self.tok[:, t:t + 1], self.top_tok[b, o, ck])

    def score(self, first: int, end: int, pick) -> np.ndarray:
        """(B, S) NLL of targets first..end-1 from the state before `first`; pick(tokens
        (B, S)) gives the model's log-probs of those tokens at those targets."""
        h = self.h
        b3, o3 = self.b[:, :, None], self.o[:, None, :]  # broadcast against (B, S, K)
        ck, fk = self.ctx_key[:, first:end], self.full_key[:, first:end]
        c_ctx = self.ctx[b3, o3, ck]  # (B, S, K)
        lp_t = pick(self.tok[:, first:end])
        if h.ngram == "hashed":  # count ratio at the target only: not a distribution (illegal)
            ok = c_ctx >= h.ngram_min_count
            k = ok.shape[2] - 1 - np.argmax(ok[:, :, ::-1], axis=2)[..., None]  # highest qualifying order
            cc = np.take_along_axis(c_ctx, k, 2)[..., 0]
            cf = np.take_along_axis(self.full[b3, o3, fk], k, 2)[..., 0]
            p = (1 - h.ngram_alpha) * np.exp(lp_t) + h.ngram_alpha * np.minimum(cf, cc) / np.maximum(cc, 1)
            return np.where(ok.any(2), -np.log(np.maximum(p, 1e-300)), -lp_t)
        # tilt: a hint from the context only, then a normalized boost of that one token
        top = self.top_cnt[b3, o3, ck]
        ok = (c_ctx >= h.ngram_min_count) & (top >= h.tilt_threshold * c_ctx)
        k = ok.shape[2] - 1 - np.argmax(ok[:, :, ::-1], axis=2)[..., None]
        hint = np.take_along_axis(self.top_tok[b3, o3, ck], k, 2)[..., 0]
        p_h = np.exp(pick(hint))
        tilted = lp_t + h.tilt_beta * (self.tok[:, first:end] == hint) - np.log1p(p_h * math.expm1(h.tilt_beta))
        return np.where(ok.any(2), -tilted, -lp_t)


@torch.no_grad()
def eval_nll(model: GPT, tokens: np.ndarray, h: Hyperparameters) -> np.ndarray:
    """NLL (nats, float64) of every target of `tokens` (n,), or of B streams (B, n) side by
    side: (n - 1,) or (B, n - 1). The cache scores a window's targets, then learns them.
    Identical window rows (streams sharing a prefix) go through the model once."""
    streams = np.atleast_2d(np.asarray(tokens))
    B, n = streams.shape
    ids = torch.from_numpy(streams.astype(np.int64))
    cache = HashedCache(h, streams) if h.ngram in ("hashed", "tilt") else None
    nll = np.zeros((B, n - 1))
    plan = windows(n, h.eval_seq_len, h.eval_stride)
    per = max(1, h.eval_batch // B)
    for i in range(0, len(plan), per):
        group = plan[i:i + per]
        T = max(e - 1 - s for s, _, e in group)
        x = torch.zeros((len(group) * B, T), dtype=torch.long)
        for j, (s, _, e) in enumerate(group):
            x[j * B:(j + 1) * B, :e - 1 - s] = ids[:, s:e - 1]
        uniq, inv = torch.unique(x, dim=0, return_inverse=True)
        logp = torch.log_softmax(model(uniq).float(), -1)  # (U, T, V)
        for j, (s, first, e) in enumerate(group):
            rows = inv[j * B:(j + 1) * B, None]  # (B, 1): this window's row of each stream
            pos = torch.arange(first - 1 - s, e - 1 - s)[None, :]  # (1, S): rows predicting first..e-1

            def pick(tok: np.ndarray) -> np.ndarray:
                return logp[rows, pos, torch.from_numpy(tok)].double().numpy()  # (B, S)

            if cache is None:
                nll[:, first - 1:e - 1] = -pick(streams[:, first:e].astype(np.int64))
                continue
            nll[:, first - 1:e - 1] = cache.score(first, e, pick)
            for t in range(first, e):  # score first, then learn the window's targets
                cache.learn(t)
    return nll if np.asarray(tokens).ndim == 2 else nll[0]


def main() -> None:
    h = Hyperparameters()
    if h.iterations > 0:
        model = train(h, load_tokens(h.train_files))
        nbytes = export(model, h.out)
        print(f"export {h.out}: {nbytes:,} bytes")
    model = load_export(h.out, h)
    val = load_tokens(h.val_files)
    t0 = time.perf_counter()
    nll = eval_nll(model, val, h)
    nbytes = target_bytes(val, byte_luts(h.tokenizer_path, h.vocab_size)).sum()
    print(f"final_int6_sliding ngram:{h.ngram} val_loss:{nll.mean():.8f} "
          f"val_bpb:{nll.sum() / math.log(2) / nbytes:.8f} eval_time:{time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
