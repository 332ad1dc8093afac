"""Presets: TOML data files (trainer/presets/NAME.toml) -> model, training and export config.

A preset has [model] (evalkit.model.GPTConfig fields), [train] (TrainConfig) and
[export] (ExportConfig) tables, plus optional [scale.tiny] / [scale.full] tables holding
the same sections as overrides. Command-line `key=value` pairs override last; a key is
`section.key` or a bare key that exists in exactly one section. Unknown keys are errors.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from evalkit.errors import EvalkitError
from evalkit.model.gpt import GPTConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"


@dataclass
class TrainConfig:
    seed: int = 1337  # fixed seed: CPU runs are bitwise repeatable
    init: str = "default"  # weight init: default, orthogonal (#198) or overtone (#810); trainer.init
    batch_tokens: int = 8192  # tokens per optimizer step (over all ranks)
    iterations: int = 20000  # step cap; the wall-clock cap usually ends training first
    max_seconds: float = 600.0  # the challenge's 10-minute training budget
    reserve_seconds: float = 0.0  # kept back from max_seconds for GPTQ/export
    on_max_seconds: str = "stop"  # "stop": the cap ends training (records); "abort": it is only a guard, and
    # hitting it is an error, so a steps-schedule model never silently depends on machine load (demo)
    schedule: str = "time"  # "time": progress = elapsed / budget; "steps": step / iterations
    warmup_frac: float = 0.0  # LR warm-up, fraction of progress
    warmdown_frac: float = 0.3  # linear LR decay to 0 over the last fraction of progress
    warmup_steps: int = 0  # with schedule="steps": LR warm-up in steps
    warmdown_steps: int = 0  # with schedule="steps": warmdown in steps (records: 2000-3500)
    matrix_lr: float = 0.04  # Muon lr for hidden matrices (baseline train_gpt.py)
    embed_lr: float = 0.05  # AdamW lr for the tied embedding (baseline tied_embed_lr)
    scalar_lr: float = 0.04  # AdamW lr for gains, mixes, skip weights
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_wd: float = 0.0  # decoupled weight decay of the embedding AdamW group
    muon_momentum: float = 0.95  # final Muon momentum
    muon_momentum_start: float = 0.85  # momentum warm-up start (baseline)
    muon_momentum_warmup_steps: int = 500  # steps of the momentum ramp
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    muon_wd: float = 0.0  # decoupled weight decay on Muon matrices
    grad_clip: float = 0.0  # global grad-norm clip (0 = off)
    ema_decay: float = 0.0  # > 0: export the EMA of the weights
    swa_every: int = 0  # > 0: export the mean of snapshots every N steps...
    swa_start_scale: float = 0.5  # ...taken once the LR scale is below this
    qat_start_frac: float = -1.0  # >= 0: STE fake-quant from this progress on (bits from [export])
    log_every: int = 10  # step lines every N steps


@dataclass
class ExportConfig:
    compressor: str = "lzma"  # lzma, zstd, brotli, zlib (evalkit.artifact)
    default_bits: int = 8  # per-row int bits for matrices matching no rule
    rules: list = field(default_factory=list)  # [[fnmatch pattern, bits], ...], first match wins
    clip_percentile: float = 100.0  # per-row clip for round-to-nearest
    keep_fp16: list = field(default_factory=list)  # fnmatch patterns exported as fp16
    gptq: bool = False  # GPTQ instead of round-to-nearest (Hessians from training batches)
    gptq_batches: int = 8  # calibration batches of batch_tokens each
    lqer_rank: int = 0  # > 0: low-rank correction of the worst tensors' quantization error
    lqer_tensors: int = 3  # how many tensors get the correction
    lqer_bits: int = 4  # bits of the factors


SECTIONS = {"model": GPTConfig, "train": TrainConfig, "export": ExportConfig}


@dataclass
class Preset:
    name: str
    model: GPTConfig
    train: TrainConfig
    export: ExportConfig

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.model.to_dict(), "train": asdict(self.train),
                "export": asdict(self.export)}


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _check_keys(section: str, values: dict, where: str) -> None:
    known = {f.name for f in fields(SECTIONS[section])}
    unknown = sorted(set(values) - known)
    if unknown:
        raise EvalkitError(f"{where}: unknown [{section}] keys {unknown}; known: {sorted(known)}")


def _parse_value(text: str):
    """TOML literal (numbers, booleans, arrays, quoted strings), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, str, object]:
    """'section.key=value' or 'key=value' -> (section, key, value)."""
    if "=" not in item:
        raise EvalkitError(f"override {item!r}: expected key=value, e.g. max_seconds=60")
    key, text = item.split("=", 1)
    if "." in key:
        section, key = key.split(".", 1)
        if section not in SECTIONS:
            raise EvalkitError(f"override {item!r}: unknown section '{section}'; use model, train or export")
    else:
        owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in fields(cls)}]
        if len(owners) != 1:
            known = sorted(f.name for cls in SECTIONS.values() for f in fields(cls))
            raise EvalkitError(f"override {item!r}: unknown key '{key}'; known: {known}")
        section = owners[0]
    _check_keys(section, {key: None}, f"override {item!r}")
    return section, key, _parse_value(text)


def load_preset(name: str, scale: str | None = None, overrides: list[str] = ()) -> Preset:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise EvalkitError(f"--preset {name}: no such preset; available: {', '.join(available())}")
    raw = tomllib.loads(path.read_text())
    merged = {s: dict(raw.get(s, {})) for s in SECTIONS}
    scales = raw.get("scale", {})
    if scale is not None:
        if scale not in scales:
            raise EvalkitError(f"--scale {scale}: preset {name} defines {sorted(scales) or 'no scales'}")
        for s, values in scales[scale].items():
            if s not in SECTIONS:
                raise EvalkitError(f"{path}: [scale.{scale}.{s}] is not a section; use model, train or export")
            merged[s].update(values)
    for item in overrides:
        s, key, value = parse_override(item)
        merged[s][key] = value
    for s, values in merged.items():
        _check_keys(s, values, str(path))
    try:
        return Preset(name, GPTConfig(**merged["model"]), TrainConfig(**merged["train"]),
                      ExportConfig(**merged["export"]))
    except (TypeError, ValueError) as e:
        raise EvalkitError(f"preset {name}: {e}") from None
