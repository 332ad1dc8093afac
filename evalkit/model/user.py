"""Your own model behind the engine's interface: `--model FILE.py:NAME`.

The contract for `NAME(artifact_path: str, device: torch.device) -> torch.nn.Module`:

- forward(idx) maps (B, T) int64 token ids to (B, T, V) logits, where row t predicts the
  token after idx[:, t]; V is the tokenizer's vocabulary.
- causal: logits at t depend only on idx[:, :t+1] (the engine right-pads windows and
  relies on it; the load check below and the audit test it);
- no state between calls: the same input gives the same logits whatever was called before
  (the engine batches windows in any order, and TTT/phases change only the parameters);
- any float dtype: the engine takes log-softmax in float32; on CUDA forward runs under
  bf16 autocast. Padding rows past a window's end are ignored.
- a context length: the module's `train_seq_len` / `seq_len` / `block_size` /
  `max_seq_len` attribute (on it or on its `config`/`cfg`/`args`/`hparams`), or --seq-len.

`UserModel` wraps the module so the engine sees what it sees of evalkit's GPT: `cfg`
(vocab_size from the logits, train_seq_len), `hidden`/`head` (logits, identity: TTT then
gathers its chunk rows from full logits) and `tok_emb`, an identity every forward starts
with (where the audit counts FLOPs). FLOPs are estimated as 2 x parameters per token (the
attention over the context is not counted: a lower bound).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from evalkit.errors import EvalkitError

SEQ_LEN_NAMES = ("train_seq_len", "seq_len", "block_size", "max_seq_len", "context_length")
CONFIG_NAMES = ("config", "cfg", "args", "hparams", "hyperparameters")


@dataclass
class UserConfig:
    """What the engine reads from `model.cfg`, for a user module."""

    vocab_size: int  # V of the logits
    train_seq_len: int  # default window length (--seq-len overrides)
    num_params: int  # unique parameters of the module
    source: str = ""  # the --model spec

    def to_dict(self) -> dict:
        return asdict(self)

    def forward_flops(self, tokens: int, context: float) -> float:
        """2 FLOPs per parameter per token: every weight takes part in one multiply-add
        (embeddings counted as the head's matmul); attention over `context` not counted."""
        return 2.0 * float(self.num_params) * float(tokens)


class UserModel(nn.Module):
    """A user's module with the interface of evalkit's GPT that the engine relies on."""

    def __init__(self, inner: nn.Module, cfg: UserConfig):
        super().__init__()
        self.inner = inner
        self.cfg = cfg
        self.tok_emb = nn.Identity()  # every forward passes the ids through it (audit FLOP counting)
        self.head_lora = None  # TTT adapters reach a user module by module-name patterns instead

    def forward(self, idx: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, V) logits; one line naming the contract when the shape is wrong."""
        out = self.inner(self.tok_emb(idx))
        if not isinstance(out, Tensor) or out.shape != (*idx.shape, self.cfg.vocab_size):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise EvalkitError(f"--model {self.cfg.source}: forward returned {got} for ids of shape "
                               f"{tuple(idx.shape)}; expected (B, T, {self.cfg.vocab_size}) logits")
        return out

    def hidden(self, idx: Tensor) -> Tensor:
        return self(idx)  # (B, T, V): the "hidden state" of a black-box module is its logits

    def head(self, h: Tensor) -> Tensor:
        return h

    def log_probs(self, idx: Tensor, rows: Tensor | None = None) -> Tensor:
        """(B, T) ids -> float32 log-softmax (B, T, V), or (n, V) at `rows` (flat indices
        into B*T), as `GPT.log_probs`: a black-box module computes every row anyway."""
        logp = torch.log_softmax(self(idx).float(), dim=-1)  # (B, T, V)
        return logp if rows is None else logp.reshape(-1, logp.size(-1)).index_select(0, rows)

    def set_context_len(self, n: int) -> None:
        """The engine tells evalkit's GPT its window (NTK RoPE); a user module keeps its own."""

    def num_params(self) -> int:
        return self.cfg.num_params


def _seq_len_of(module: nn.Module) -> int | None:
    holders = [module] + [getattr(module, n) for n in CONFIG_NAMES if getattr(module, n, None) is not None]
    for h in holders:
        for name in SEQ_LEN_NAMES:
            v = h.get(name) if isinstance(h, dict) else getattr(h, name, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def check_contract(model: UserModel, device: torch.device, probe_len: int = 24) -> None:
    """Causal and stateless on a short random input: cutting the tail or calling again must
    not move earlier logits. Cheap (3 forwards of `probe_len`); the audit checks thoroughly."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.cfg.vocab_size, (2, probe_len), generator=g).to(device)
    with torch.no_grad():
        full = model(idx).float()
        again = model(idx).float()
        cut = model(idx[:, : probe_len // 2]).float()
    scale = max(1.0, float(full.abs().max()))
    tol = (1e-4 if full.dtype == torch.float32 and device.type == "cpu" else 2e-2) * scale
    src = model.cfg.source
    if (d := float((full - again).abs().max())) > tol:
        raise EvalkitError(f"--model {src}: two calls on the same ids differ by {d:.3g}; the contract needs "
                           "no state between calls (reset caches/KV state inside forward)")
    if (d := float((full[:, : probe_len // 2] - cut).abs().max())) > tol:
        raise EvalkitError(f"--model {src}: logits at early positions move by {d:.3g} when later ids are "
                           "removed; forward must be causal (row t may read ids up to t only)")


def wrap_user_module(module: object, spec: str, seq_len: int | None, device: torch.device) -> UserModel:
    """Check what NAME returned and wrap it; vocabulary from the logits of a 1-token probe."""
    if not isinstance(module, nn.Module):
        raise EvalkitError(f"--model {spec}: returned a {type(module).__name__}, expected a torch.nn.Module")
    module = module.to(device).eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros((1, 2), dtype=torch.long, device=device))
    except Exception as e:  # user code: one line, not a traceback
        raise EvalkitError(f"--model {spec}: forward on (1, 2) ids raised {type(e).__name__}: {e}") from None
    if not isinstance(out, Tensor) or out.ndim != 3 or out.shape[:2] != (1, 2):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise EvalkitError(f"--model {spec}: forward on (1, 2) ids returned {got}; expected (1, 2, V) logits")
    seq = seq_len or _seq_len_of(module)
    if seq is None:
        raise EvalkitError(f"--model {spec}: cannot tell the model's context length (no {'/'.join(SEQ_LEN_NAMES)} "
                           "attribute); pass --seq-len")
    n_params = sum(p.numel() for p in module.parameters())
    wrapped = UserModel(module, UserConfig(int(out.shape[-1]), int(seq), n_params, spec))
    check_contract(wrapped, device)
    return wrapped
