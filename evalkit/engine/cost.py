"""What a strategy would cost on the challenge's machine: projected 8xH100 eval seconds.

A projection, not a measurement: model time comes from FLOPs (evalkit.model's estimate,
counting every virtual layer of depth recurrence) at an assumed utilization, for every
pass the strategy makes (sliding recomputation, TTT chunk windows, training steps, global
phases) from the real per-document lengths of the split; non-model time (n-gram mixers)
comes from the measured seconds, scaled to the full split: the node's one n-gram pass
(evalkit.engine.nodetable) covers the whole split on one host thread.
`projected_8xh100_seconds` is the one cost function: ablate and the audit call it.
"""
from __future__ import annotations

import numpy as np

from evalkit.model.gpt import GPTConfig, estimate_forward_flops
from evalkit.model.layers import layer_order

H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak of one H100 SXM
RANKS = 8
DEFAULT_UTILIZATION = 0.35  # eval kernels on short windows reach roughly a third of peak
EVAL_LIMIT_S = 600.0  # the challenge's evaluation budget on 8xH100 (rule C8)
SPLIT_TOKENS = {1024: 62_020_000, 8192: 40_540_000}  # the full validation split by vocabulary (anchors.md)
FULL_SPLIT_TOKENS = SPLIT_TOKENS[1024]


def split_size(vocab_size: int, val_tokens: int | None = None) -> int:
    """Tokens of the full validation split for this vocabulary (anchors.md), or `val_tokens`
    (the user's --val) for a vocabulary the table does not know."""
    if vocab_size in SPLIT_TOKENS:
        return SPLIT_TOKENS[vocab_size]
    return int(val_tokens or FULL_SPLIT_TOKENS)


def forward_flops(cfg: GPTConfig, tokens: float, context: float) -> float:
    """Forward FLOPs of `tokens` positions at mean span `context`, every virtual layer of
    depth recurrence counted (a block run twice costs twice). A --model module's config
    states its own cost (evalkit/model/user.py)."""
    if hasattr(cfg, "forward_flops"):
        return cfg.forward_flops(tokens, context)
    virtual = len(layer_order(cfg.num_layers, cfg.recur_start, cfg.recur_end, cfg.recur_times))
    total = estimate_forward_flops(cfg, 1, context)
    head = 2.0 * cfg.model_dim * cfg.vocab_size
    return float(tokens) * (head + (total - head) * virtual / cfg.num_layers)


def gpu_seconds(flops: float, utilization: float = DEFAULT_UTILIZATION) -> float:
    """Seconds for `flops` spread over 8 H100s at `utilization` of the bf16 peak."""
    return flops / (RANKS * H100_BF16_FLOPS * utilization)


def model_passes(strategy_config: dict, doc_tokens: np.ndarray | None = None) -> tuple[float, float]:
    """(forward tokens computed per scored token, extra forward-equivalents per scored token
    for training) implied by a strategy's config.

    flat: each token once. sliding: every window recomputes seq_len tokens to score
    `stride` new ones, so seq_len / stride. ttt: each chunk of --ttt-chunk targets is scored
    by a forward over its window (up to --ttt-context tokens of its document), and every
    chunk but a document's last then trains: the backward costs about 2 forwards, each
    step after the first adds a forward and a backward (3). TTT cost depends on document
    lengths (`doc_tokens`, targets per document; without them each document is taken to
    be one chunk). Global phases (--ttt-phases B1,B2,..): after the first Bk documents of
    the longest-first queue are scored, the base weights train --ttt-phase-epochs times on
    them (forward + backward, 3 forward-equivalents a token). Unknown strategies are
    charged as flat (the audit measures them instead)."""
    name = strategy_config.get("name", "")
    if name == "sliding":
        seq_len = strategy_config.get("seq_len") or 1
        return seq_len / (strategy_config.get("stride") or seq_len), 0.0
    if name != "ttt":
        return 1.0, 0.0
    chunk, context = strategy_config["ttt_chunk"], strategy_config["ttt_context"]
    lengths = np.asarray(doc_tokens if doc_tokens is not None else [chunk], dtype=np.int64)
    lengths = lengths[lengths > 0]
    n = -(-lengths // chunk)  # chunks per document
    doc = np.repeat(np.arange(lengths.size), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # chunk index inside its document
    window = np.minimum(np.minimum(lengths[doc], (k + 1) * chunk), context)
    trained = window[k < n[doc] - 1].sum()
    steps = int(strategy_config.get("ttt_steps", 1) or 1)
    total = max(int(lengths.sum()), 1)
    train = (2.0 + 3.0 * (steps - 1)) * float(trained) + 3.0 * _phase_tokens(strategy_config, lengths)
    return float(window.sum()) / total, train / total


def _phase_tokens(strategy_config: dict, lengths: np.ndarray) -> float:
    """Tokens the global phases train on: the longest-first queue's first Bk documents,
    once per phase and epoch."""
    phases = strategy_config.get("ttt_phases") or []
    if isinstance(phases, str):
        phases = [int(b) for b in phases.split(",") if b.strip()]
    queue = np.sort(lengths)[::-1]
    epochs = int(strategy_config.get("ttt_phase_epochs", 1) or 1)
    return float(sum(queue[:int(b)].sum() for b in phases if 0 < int(b) < queue.size)) * epochs


def projected_8xh100_seconds(cfg: GPTConfig, strategy_config: dict, scored_tokens: int,
                             mixer_seconds: float = 0.0, utilization: float = DEFAULT_UTILIZATION,
                             split_tokens: int | None = None,
                             doc_tokens: np.ndarray | None = None,
                             passes: tuple[float, float] | None = None) -> float:
    """Projected eval seconds on 8xH100 for the full split.

    model = forward FLOPs(split_tokens, context) x (forward passes + training passes)
            / (8 x 989e12 x utilization), context = seq_len / 2 (the mean causal span);
            passes from the strategy's config and `doc_tokens` (model_passes), or measured
            (`passes`, as the audit counts them for a plugin), whichever is larger;
    mixer = measured mixer seconds x split_tokens / scored_tokens (one pass per node over
            the whole split, on one host thread: not divided over the ranks; it runs
            beside the model, but is added, not overlapped: an upper bound)."""
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    if split_tokens is None:  # the full split of this vocabulary (sp8192's is 35% shorter)
        split_tokens = split_size(cfg.vocab_size)
    seq_len = strategy_config.get("seq_len") or cfg.train_seq_len
    forward, train = model_passes(strategy_config, doc_tokens)
    if passes is not None:
        forward, train = max(forward, passes[0]), max(train, passes[1])
    flops = forward_flops(cfg, split_tokens, seq_len / 2) * (forward + train)
    model_s = gpu_seconds(flops, utilization)
    mixer_s = mixer_seconds * split_tokens / max(scored_tokens, 1)
    return model_s + mixer_s
