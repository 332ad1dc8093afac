"""`python -m trainer.train --preset NAME --train GLOB --out X.ptz [--scale tiny|full] [key=value ...]`

Trains evalkit's GPT with a preset's recipe and exports a scoreable artifact. Runs on one
process (CPU: float32, fixed seed) or under `torchrun` (DDP; bf16 autocast on CUDA).
Reads training shards only: a glob naming `*_val_*` files is refused (legality C6).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from evalkit.data.shards import check_token_range, load_stream, resolve_glob
from evalkit.engine.dist import DistInfo, init_dist, shutdown
from evalkit.cli import CliParser, run_cli, set_threads
from evalkit.data.tokenizer import RECORD_SUFFIX, file_sha256, recorded_tokenizer
from evalkit.model.artifact import TOKENIZER_META
from evalkit.errors import EvalkitError
from evalkit.model.gpt import GPT
from evalkit.engine.report import provenance
from trainer.averaging import EMA, SWA
from trainer.config import Preset, available, load_preset
from trainer.export import export_artifact
from trainer.init import apply_init
from trainer.optim import apply_schedule, build_optimizers, lr_scale, muon_momentum

log = logging.getLogger("trainer")


def train_tokens(pattern: str) -> np.ndarray:
    """The training stream; refuses validation shards (C6: no val data in training)."""
    paths = resolve_glob(pattern, "--train")
    bad = [p.name for p in paths if "_val_" in p.name]
    if bad:
        raise EvalkitError(f"--train {pattern!r} matches validation shards {bad[:3]}; training may read "
                           "only *_train_* shards (legality C6)")
    return load_stream(pattern, flag="--train")


class Batches:
    """Random (B, T) windows of the stream; each rank draws from its own seeded generator."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_seqs: int, seed: int, device: torch.device):
        if tokens.size < seq_len + 2:
            raise EvalkitError(f"--train: {tokens.size} tokens is shorter than one sequence of {seq_len}; "
                               "give more data or set train_seq_len lower")
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.seq_len, self.batch_seqs, self.device = seq_len, batch_seqs, device
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, self.tokens.numel() - self.seq_len - 1, self.batch_seqs)
        idx = torch.from_numpy(starts)[:, None] + torch.arange(self.seq_len + 1)[None]
        chunk = self.tokens[idx]  # (B, T + 1)
        if self.device.type == "cuda":  # pinned + asynchronous: the host does not wait for the GPU
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]


class Progress:
    """Training progress in [0, 1] by wall-clock fraction or by steps, and the stop rule.

    Under DDP the clock is agreed: `tick()` (once per step, on every rank) all-reduces the
    largest elapsed time over ranks, so every rank makes the same stop decision at the same
    step (a rank that stopped alone would leave the others blocked in DDP's all-reduce) and
    follows the same LR schedule. The reduction runs on a host-side gloo group: no GPU sync."""

    def __init__(self, t, start: float, info: DistInfo | None = None):
        self.t, self.start = t, start
        self.budget = max(t.max_seconds - t.reserve_seconds, 1e-6)
        if t.on_max_seconds not in ("stop", "abort"):
            raise EvalkitError(f"on_max_seconds={t.on_max_seconds!r}: use stop or abort")
        if t.on_max_seconds == "abort" and t.schedule != "steps":
            raise EvalkitError("on_max_seconds=abort needs schedule=steps (a time schedule ends on the clock)")
        self.by_steps_only = t.on_max_seconds == "abort"  # the clock may abort the run, never shape it
        self.group = clock_group(info) if info is not None and info.distributed else None
        self.now = 0.0

    def tick(self) -> float:
        """Fix this step's elapsed seconds (the slowest rank's under DDP)."""
        local = time.perf_counter() - self.start
        if self.group is not None:
            t = torch.tensor([local], dtype=torch.float64)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.group)
            local = float(t)
        self.now = local
        return local

    def elapsed(self) -> float:
        return self.now

    def value(self, step: int) -> float:
        by_steps = step / max(self.t.iterations, 1)
        return max(by_steps, self.elapsed() / self.budget) if self.t.schedule == "time" else by_steps

    def scale(self, step: int) -> float:
        t = self.t
        if t.schedule == "time":
            return lr_scale(self.value(step), t.warmup_frac, t.warmdown_frac)
        if t.warmup_steps and step < t.warmup_steps:
            return step / t.warmup_steps
        # Steps left: by the step cap, or by the wall clock at the mean step time so far
        # (as the records do: a warmdown of N steps ends when the time budget does).
        left = t.iterations - step
        if step > 0 and not self.by_steps_only:
            left = min(left, (self.budget - self.elapsed()) / (self.elapsed() / step))
        return min(1.0, max(left, 0.0) / t.warmdown_steps) if t.warmdown_steps else 1.0

    def done(self, step: int) -> bool:
        """The stop rule; also fixes this step's clock (a collective under DDP: every rank
        calls it once per step, so all ranks decide alike)."""
        self.tick()
        if step >= self.t.iterations:
            return True
        if self.elapsed() < self.budget:
            return False
        if self.by_steps_only:
            raise EvalkitError(f"training hit its {self.t.max_seconds:.0f} s guard after {step} of "
                               f"{self.t.iterations} steps; stopping there would give a different model, so it "
                               "aborts: free the CPU (or pass --threads), or raise max_seconds=...")
        return True


def clock_group(info: DistInfo):
    """A gloo group for the agreed clock (host tensors), or the default group if it is gloo."""
    if torch.distributed.get_backend() == "gloo":
        return torch.distributed.group.WORLD
    return torch.distributed.new_group(backend="gloo")


def train(preset: Preset, tokens: np.ndarray, info: DistInfo, progress_bar: bool = True):
    """Run the recipe; returns (model, state dict to export, stats)."""
    cfg, t = preset.model, preset.train
    torch.manual_seed(t.seed)
    model = GPT(cfg)
    apply_init(model, t.init)
    model = model.to(info.device)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if info.distributed else model
    seqs = max(1, t.batch_tokens // (cfg.train_seq_len * info.world_size))
    batches = Batches(tokens, cfg.train_seq_len, seqs, t.seed + info.rank, info.device)
    opts = build_optimizers(model, vars(t))
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
    swa = SWA(t.swa_every, t.swa_start_scale) if t.swa_every > 0 else None
    qat = None
    if t.qat_start_frac >= 0:
        from trainer.qat import FakeQuant
        qat = FakeQuant(model, preset.export)
    autocast = torch.autocast("cuda", torch.bfloat16) if info.device.type == "cuda" else nullcontext()
    prog, step, loss_ema = Progress(t, time.perf_counter(), info), 0, None
    tokens_per_step = seqs * cfg.train_seq_len * info.world_size
    while not prog.done(step):
        scale = prog.scale(step)
        apply_schedule(opts, scale, muon_momentum(step, t.muon_momentum_start, t.muon_momentum,
                                                  t.muon_momentum_warmup_steps))
        if qat is not None:
            qat.enabled = prog.value(step) >= t.qat_start_frac
        x, y = batches.next()
        with autocast:
            logits = ddp(x)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        for opt in opts:
            opt.step()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            ema.update(model)
        if swa is not None:
            swa.maybe_update(model, step, scale)
        # The loss stays on the device: float() would make the host wait for the GPU every step.
        lv = loss.detach()
        loss_ema = lv if loss_ema is None else 0.9 * loss_ema + 0.1 * lv
        if info.is_main and progress_bar and (step % t.log_every == 0 or step == 1):
            log_step(step, float(lv), scale, prog, tokens_per_step)
    if qat is not None:
        qat.remove()
    state = model.state_dict()
    if swa is not None and swa.state_dict() is not None:
        state = swa.state_dict()
    elif ema is not None:
        state = ema.state_dict()
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    stats = {"steps": step, "train_seconds": round(prog.tick(), 2),
             "train_loss_ema": None if loss_ema is None else float(loss_ema),
             "tokens_seen": step * tokens_per_step, "swa_snapshots": swa.count if swa else 0}
    return model, state, stats


def log_step(step: int, loss: float, scale: float, prog: Progress, tokens_per_step: int) -> None:
    el = prog.elapsed()
    frac = max(prog.value(step), el / prog.budget, 1e-9)  # whichever cap ends training first
    eta = el / frac - el
    log.info("step %d  loss %.4f  lr_scale %.3f  %s tok/s  elapsed %.0fs  eta %.0fs",
             step, loss, scale, f"{step * tokens_per_step / max(el, 1e-9):,.0f}", el, eta)


def training_tokenizer(tokenizer: str | None, train_glob: str) -> dict:
    """{"tokenizer": name, TOKENIZER_META: sha256} for the artifact's meta, so scoring can refuse
    another tokenizer: from --tokenizer, else from the record data prepare left beside the shards."""
    rec = recorded_tokenizer(train_glob)
    if tokenizer is not None:
        if not Path(tokenizer).is_file():
            raise EvalkitError(f"--tokenizer {tokenizer}: file not found; pass the .model the shards were written with")
        sha = file_sha256(tokenizer)
        if rec is not None and rec[1]["tokenizer_sha256"] != sha:
            raise EvalkitError(f"--tokenizer {tokenizer} (sha256 {sha[:12]}) is not the tokenizer {rec[0]} records "
                               f"(sha256 {rec[1]['tokenizer_sha256'][:12]}); pass that one")
        return {"tokenizer": Path(tokenizer).name, TOKENIZER_META: sha}
    if rec is None:
        log.warning("warning: no --tokenizer and no *%s beside --train: the artifact will not record its tokenizer, "
                    "so scoring cannot check it", RECORD_SUFFIX)
        return {}
    return {"tokenizer": rec[1].get("tokenizer", "?"), TOKENIZER_META: rec[1]["tokenizer_sha256"]}


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m trainer.train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True, help=f"recipe name: {', '.join(available())}")
    p.add_argument("--scale", choices=("tiny", "full"), default=None, help="the preset's size variant")
    p.add_argument("--train", required=True, help="training shard glob, e.g. 'DIR/*_train_*.bin'")
    p.add_argument("--out", required=True, help="artifact path (.ptz)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: free physical cores / local processes, "
                        "1 when the CPU is already busy; the choice is printed)")
    p.add_argument("--tokenizer", default=None,
                   help="the .model the shards were written with, recorded in the artifact (default: the "
                        "NAME_tokenizer.json that data prepare wrote beside the shards)")
    p.add_argument("--quiet", action="store_true", help="no step lines")
    p.add_argument("overrides", nargs="*", help="key=value or section.key=value preset overrides")
    return p


def run(args: argparse.Namespace) -> dict:
    preset = load_preset(args.preset, args.scale, args.overrides)
    set_threads(args.threads)
    info = init_dist(args.device)
    tokens = train_tokens(args.train)
    tokenizer_meta = training_tokenizer(args.tokenizer, args.train)
    check_token_range(tokens, preset.model.vocab_size, args.train)
    record = provenance(preset=preset.to_dict(), train_glob=args.train, device=str(info.device),
                        world_size=info.world_size, params=GPT(preset.model).num_params())
    if info.is_main:
        log.info("config %s", json.dumps(record, default=str))
    model, state, stats = train(preset, tokens, info, not args.quiet)
    record["stats"] = stats
    if info.is_main:
        log.info("trained: %s", json.dumps(stats))
        hess = None
        if preset.export.gptq:
            from trainer.gptq import collect_hessians
            hess = lambda: collect_hessians(model, state, Batches(tokens, preset.model.train_seq_len,  # noqa: E731
                                            max(1, preset.train.batch_tokens // preset.model.train_seq_len),
                                            preset.train.seed + 999, info.device), preset.export.gptq_batches)
        record["artifact_bytes"] = export_artifact(args.out, preset.model, state, preset.export,
                                                   meta={k: record[k] for k in ("git", "versions", "stats")}
                                                   | {"preset": args.preset, "scale": args.scale} | tokenizer_meta,
                                                   hessians=hess)
    return record


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    def body() -> None:
        run(build_parser().parse_args(argv))

    return run_cli(body, cleanup=shutdown)


if __name__ == "__main__":
    sys.exit(main())
