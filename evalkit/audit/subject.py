"""What is audited (`Subject`) and one engine run of it (`run_strategy` -> `Run`).

Every run starts from fresh state: a deep copy of the model, a new strategy object and
the same torch seed, so any difference between two runs is caused by the tokens and
nothing else. Probes and early stops go through evalkit.engine.probes, which nothing the
strategy receives reveals. The run counts model FLOPs with a hook on the embedding (every
forward, however a strategy calls the model, starts there) and, when asked, records which
source files the evaluation executed (the code counted against the 16 MB cap).
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evalkit.engine import probes as probe_mod
from evalkit.engine.context import EvalData
from evalkit.engine.cost import forward_flops
from evalkit.engine.ledger import Ledger, LedgerViolation
from evalkit.engine.loop import Result, evaluate
from evalkit.model.gpt import GPT

ROOT = Path(__file__).resolve().parents[2]
# run before evaluate() starts: loading the artifact and the shards
LOADING_FILES = ("evalkit/engine/inputs.py", "evalkit/model/artifact.py", "evalkit/model/quant.py",
                 "evalkit/data/shards.py", "evalkit/data/tokenizer.py")


@dataclass
class Subject:
    """A strategy factory (fresh object per run), the model and an optional mixer spec."""

    label: str
    make: Callable[[], object]
    model: GPT
    info: object  # evalkit.engine.dist.DistInfo
    mixer_spec: str | None = None
    seed: int = 1337
    code_files: list[str] = field(default_factory=list)  # plugin sources counted against the cap

    def strategy(self):
        return self.make()

    def claims_isolation(self) -> bool:
        # A cache over the whole split links documents, whatever the window plan claims.
        return bool(getattr(self.make(), "claims_doc_isolation", False)) and not self.mixer_spec


@dataclass
class Run:
    """One engine run: its ledger (partial if stopped early) and what was measured."""

    ledger: Ledger | None
    result: Result | None = None
    error: str = ""  # why the run did not finish (a LedgerViolation or a crash)
    stopped: bool = False  # stopped early on purpose (every compared position was scored)
    probes: dict = field(default_factory=dict)  # position -> evalkit.engine.probes.Probe
    flops: float = 0.0
    forward_tokens: int = 0  # positions through a forward without gradients
    train_tokens: int = 0  # positions through a forward with gradients on (training)
    mixer_seconds: float = 0.0
    mixer_stats: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    code: set[str] = field(default_factory=set)  # repository files executed (when traced)

    @property
    def ok(self) -> bool:
        return self.ledger is not None and not self.error


def _tracer(files: set[str], roots: tuple[str, ...]):
    def prof(frame, event, _arg):
        if event == "call":
            f = frame.f_code.co_filename
            if f.startswith(roots):
                files.add(f)
    return prof


def run_strategy(subject: Subject, data: EvalData, probes: frozenset[int] = frozenset(),
                 stop_after: np.ndarray | None = None, trace_code: bool = False) -> Run:
    """Evaluate once from fresh state; stop once every `stop_after` position is scored."""
    model = copy.deepcopy(subject.model)  # strategies may train the weights (TTT, warm-ups)
    torch.manual_seed(subject.seed)
    strategy = subject.make()
    run = Run(None)

    def hook(_mod, inputs, _out) -> None:
        shape = inputs[0].shape
        T = shape[-1] if len(shape) else 1
        n = int(inputs[0].numel())
        f = forward_flops(model.cfg, n, (T + 1) / 2)  # causal: mean span (T+1)/2
        if torch.is_grad_enabled():
            run.train_tokens += n
            f *= 3  # forward + backward of a training step
        else:
            run.forward_tokens += n
        run.flops += f

    handle = model.tok_emb.register_forward_hook(hook)
    roots = tuple(str(ROOT / d) for d in ("evalkit", "caches")) + tuple(str(Path(f).resolve())
                                                                      for f in subject.code_files)
    t0 = time.perf_counter()
    with probe_mod.capture(probes, stop_after) as cap:
        if trace_code:
            sys.setprofile(_tracer(run.code, roots))
        try:
            run.result, run.ledger = evaluate(model, data, strategy, subject.info, subject.mixer_spec, progress=False)
        except probe_mod.AuditStop:
            run.stopped = True
        except LedgerViolation as e:
            run.error = str(e)
        except Exception as e:  # a user's strategy crashed: the report says so and stops there
            run.error = f"the strategy raised {type(e).__name__}: {e}"
        finally:
            if trace_code:
                sys.setprofile(None)
            handle.remove()
    run.seconds = time.perf_counter() - t0
    run.ledger = run.ledger if run.ledger is not None else cap.ledger
    run.probes, run.mixer_seconds = cap.probes, cap.mixer_seconds
    run.mixer_stats = [_stats(m) for m in cap.mixers]
    return run


def _stats(mixer) -> dict:
    """mixer.stats() per the mixer protocol, or what the audit can say without it."""
    out = {"mixer": str(getattr(mixer, "name", type(mixer).__name__))}
    stats = getattr(mixer, "stats", None)
    if callable(stats):
        out.update(stats())
    return out


def counted_files(run: Run) -> list[Path]:
    """Source files the evaluation ran (traced), plus the artifact and shard loaders; the
    audit's own modules are not part of an evaluation (its gallery plugins are)."""
    audit_dir = ROOT / "evalkit" / "audit"
    files = {Path(f) for f in run.code} | {ROOT / f for f in LOADING_FILES}
    return sorted(f for f in files if f.exists() and not (f.parent == audit_dir))
