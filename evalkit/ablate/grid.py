"""Ablation grids: a list of named runs, each the flags of one `evalkit.score` run.

    baseline = "flat"            # optional; default: the first run
    [[run]]
    name = "sliding+mix"
    strategy = "sliding"
    ngram = "mix:orders=2-11"    # one mixer per run (or none)
    stride = 64                  # any per-run score flag, dashes or underscores

Keys are checked against the score parser's own flags, so a strategy's new flags
(`--ttt-*`) are grid keys as soon as it registers them. Values are type-checked here, so
a typo fails before any model is loaded.
"""
from __future__ import annotations

import argparse
import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from evalkit.errors import EvalkitError

# Flags that describe the inputs or the process, shared by every run of one ablation.
GLOBAL_DESTS = frozenset({"help", "artifact", "val", "tokenizer", "byte_sidecar", "baseline_config", "limit_docs",
                          "device", "threads", "no_progress", "model", "plugin"})


@dataclass(frozen=True)
class RunSpec:
    name: str
    strategy: str
    ngram: str | None = None
    overrides: dict = field(default_factory=dict)  # argparse dest -> value


def per_run_actions(parser: argparse.ArgumentParser, exclude: frozenset[str] = frozenset()) -> dict:
    """dest -> argparse action for every flag a grid run may set."""
    return {a.dest: a for a in parser._actions if a.dest not in GLOBAL_DESTS | exclude}


def _check_value(where: str, key: str, value, action: argparse.Action):
    flag = action.option_strings[0] if action.option_strings else key
    if action.nargs == 0:  # store_true style switches
        if not isinstance(value, bool):
            raise EvalkitError(f"{where}: {key} = {value!r}; {flag} is a switch, write true or false")
        return value
    kind = action.type or str
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise EvalkitError(f"{where}: {key} = {value!r}; {flag} takes a {kind.__name__}")
    if action.choices is not None and value not in action.choices:
        raise EvalkitError(f"{where}: {key} = {value!r}; choose from {', '.join(map(str, action.choices))}")
    return value


def _parse_run(where: str, entry: dict, actions: dict) -> RunSpec:
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        raise EvalkitError(f"{where}: every [[run]] needs name = \"...\"")
    overrides, strategy, ngram = {}, "sliding", None
    for raw_key, value in entry.items():
        key = raw_key.replace("-", "_")
        if key == "name":
            continue
        if key not in actions:
            raise EvalkitError(f"{where}: unknown key {raw_key!r} in run {entry['name']!r}; accepted: name, "
                               + ", ".join(sorted(actions)))
        if key in ("strategy", "ngram"):
            if not isinstance(value, str):
                raise EvalkitError(f"{where}: {key} = {value!r}; write one quoted string per run")
            strategy, ngram = (value, ngram) if key == "strategy" else (strategy, value or None)
            continue
        overrides[key] = _check_value(where, raw_key, value, actions[key])
    return RunSpec(entry["name"], strategy, ngram, overrides)


def load_grid(path: str | Path, actions: dict) -> tuple[list[RunSpec], str | None]:
    """(runs, baseline name or None) from a TOML grid; `actions` from `per_run_actions`."""
    where = f"--grid {path}"
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EvalkitError(f"{where}: file not found; check the path, or copy examples/grid.toml") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EvalkitError(f"{where}: not valid TOML ({e}); see examples/grid.toml") from None
    unknown = set(doc) - {"run", "baseline"}
    if unknown:
        raise EvalkitError(f"{where}: unknown top-level key {sorted(unknown)[0]!r}; use baseline = \"NAME\" "
                           "and [[run]] tables")
    entries = doc.get("run")
    if not isinstance(entries, list) or not entries:
        raise EvalkitError(f"{where}: no [[run]] tables; see examples/grid.toml")
    runs = [_parse_run(where, e, actions) for e in entries]
    check_unique(runs, where)
    baseline = doc.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise EvalkitError(f"{where}: baseline = {baseline!r}; write the name of one run")
    return runs, baseline


def cli_runs(strategies: list[str], ngrams: list[str]) -> list[RunSpec]:
    """`--strategy S ... --ngram M ...`: as score, each strategy alone and with each mixer."""
    runs = [RunSpec(s + (f"+{m}" if m else ""), s, m) for s in strategies for m in [None, *ngrams]]
    check_unique(runs, "--strategy")
    return runs


def check_unique(runs: list[RunSpec], where: str) -> None:
    seen: set[str] = set()
    for r in runs:
        if r.name in seen:
            raise EvalkitError(f"{where}: run name {r.name!r} appears twice; names label the table rows")
        seen.add(r.name)


def run_options(base: argparse.Namespace, run: RunSpec) -> argparse.Namespace:
    """The full option namespace of one run: the command line's flags, then the run's."""
    opts = copy.copy(base)
    for key, value in run.overrides.items():
        setattr(opts, key, value)
    opts.strategy, opts.ngram = run.strategy, run.ngram
    return opts
