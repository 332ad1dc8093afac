"""What a strategy sees: the split (`EvalData`) and its one door to the ledger (`EvalContext`).

`EvalContext.score` fixes scores (model log-probs -> optional n-gram mixer, which learns each
position right after scoring it -> ledger) and `after_scoring` / `tokens_for_learning` are the
other ways state may learn from a token, so
every built-in is score-first by construction and the audit can check it.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from evalkit.engine import probes
from evalkit.engine.dist import DistInfo, all_gather_arrays
from evalkit.engine.ledger import Ledger
from evalkit.engine.mixing import score_through_mixer
from evalkit.model.gpt import GPT


@dataclass
class EvalData:
    """The validation split as the engine sees it."""

    tokens: np.ndarray  # uint16 (N,) the whole stream, documents starting at BOS
    target_bytes: np.ndarray  # int64 (N,) bytes charged to each target (0 at position 0)
    doc_starts: np.ndarray  # int64 (D,) position of each document's BOS
    source: str = ""  # the --val glob, for reports
    sha256: str = field(default="")  # of the token stream, so results name their data

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(np.ascontiguousarray(self.tokens).tobytes()).hexdigest()

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)

    def doc_of_target(self) -> np.ndarray:
        """int64 (N,) document index owning each target (position 0 -> document 0);
        a document owns its targets up to and including the next document's BOS."""
        pos = np.arange(self.n_tokens, dtype=np.int64)
        return np.maximum(np.searchsorted(self.doc_starts, pos - 1, side="right") - 1, 0)


class EvalContext:
    """What a strategy may touch while it runs: the model, the tokens, and the ledger
    through `score` (fix scores) and `after_scoring` / `tokens_for_learning` (learn)."""

    def __init__(self, model: GPT, data: EvalData, ledger: Ledger, strategy_name: str, info: DistInfo,
                 mixer=None, share_mixer: bool = False, progress: bool = True):
        self.model, self.data, self.ledger, self.info = model, data, ledger, info
        self.strategy_name, self.mixer, self.share_mixer = strategy_name, mixer, share_mixer
        self.device = info.device
        self.show_progress = progress and info.is_main

    # -- model -------------------------------------------------------------------------
    def autocast(self):
        """bf16 autocast on CUDA; plain float32 on CPU (exactness and CPU speed)."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inputs(self, start: int, end: int) -> torch.Tensor:
        """(end - start,) input ids that predict targets start..end-1."""
        return torch.from_numpy(self.data.tokens[start - 1:end - 1].astype(np.int64)).to(self.device)

    def log_probs(self, idx: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, V) float32 log-softmax of the model (or `model`)."""
        with self.autocast():
            logits = (model or self.model)(idx)
        return torch.log_softmax(logits.float(), dim=-1)

    # -- the two doors to the ledger ------------------------------------------------------
    def score(self, positions: np.ndarray, logp: torch.Tensor) -> np.ndarray:
        """Fix the scores of `positions` from the model's (n, V) log-probs at them, through
        the mixer if any (which learns each position right after computing its score, in the
        order given: evalkit/engine/mixing.py). Returns the float64 (n,) NLLs in nats."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return np.zeros(0)
        targets = torch.from_numpy(self.data.tokens[positions].astype(np.int64)).to(logp.device)
        cap = probes.active()  # the audit's request, invisible to the strategy
        probe = np.flatnonzero(cap.wanted(positions)) if cap is not None else np.zeros(0, np.int64)
        if self.mixer is None:
            target_logp = logp.gather(1, targets[:, None])[:, 0].double().cpu().numpy()
            dists = {int(positions[i]): probes.probe_rows(logp[i:i + 1])[0] for i in probe}
        else:
            target_logp, dists = score_through_mixer(self.mixer, positions, logp, targets, probe)
        if cap is not None:
            for i in probe:
                p = int(positions[i])
                cap.probes[p] = probes.Probe(np.asarray(dists[p], np.float64), float(target_logp[i]),
                                             str(logp.dtype).split(".")[-1], cap.own.get(p))
        nll = -np.asarray(target_logp, dtype=np.float64)
        self.ledger.record_scores(positions, nll, self.strategy_name)
        if self.mixer is not None:  # the cache learned these positions once their scores were known
            self.ledger.check_learn(positions, self.strategy_name)
        if cap is not None:
            cap.after_scores(positions, self.ledger)  # may stop an audit re-run (probes.AuditStop)
        return nll

    def after_scoring(self, positions: np.ndarray) -> None:
        """Door for state other than the mixer (which learns in `score`). With a shared mixer
        and several ranks this is a collective: every rank calls it once per step, maybe with
        none, and learns the positions the other ranks scored."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.mixer is None or not (self.share_mixer and self.info.distributed):
            return
        others = np.concatenate(all_gather_arrays(positions, self.info))
        others = np.sort(others[~np.isin(others, positions)])
        if others.size:
            with probes.Timer(self.mixer):
                (self.mixer.learn if hasattr(self.mixer, "learn") else self.mixer.update)(others)

    def tokens_for_learning(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at `positions` for a learning step (TTT); raises unless all scored."""
        positions = np.asarray(positions, dtype=np.int64)
        self.ledger.check_learn(positions, self.strategy_name)
        return self.data.tokens[positions]

    def warmup_tokens(self, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
        """Random token ids for compile/allocator warm-ups: the only legal warm-up input."""
        g = torch.Generator().manual_seed(seed)
        vocab = self.model.cfg.vocab_size
        ids = torch.randint(0, vocab, shape, generator=g)
        self.ledger.record_warmup(self.strategy_name, "random", ids.numel())
        return ids.to(self.device)

    def progress(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="tok", disable=not self.show_progress, leave=False,
                    dynamic_ncols=True)
