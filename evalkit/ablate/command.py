"""`python -m evalkit.ablate ARTIFACT --val GLOB --tokenizer M --grid G.toml | --strategy S ...`

Many strategies on one artifact, compared document by document against a baseline:
Δbpb with a paired bootstrap 95% interval and a one-sided p-value (also in nats per
token, the challenge's unit), measured and projected 8xH100 seconds, and plots. Runs
that differ only in their n-gram mixer share one model pass (evalkit.fanout). Finished
runs are cached under DIR/cache; `--resume` reuses them when artifact, data and config
match. Under `torchrun` every rank evaluates and rank 0 writes.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evalkit.ablate import runcache
from evalkit.engine.cost import DEFAULT_UTILIZATION, FULL_SPLIT_TOKENS, projected_8xh100_seconds
from evalkit.engine.dist import broadcast_object, shutdown
from evalkit.cli import CliParser, run_cli
from evalkit.errors import EvalkitError
from evalkit.engine.fanout import evaluate_many
from evalkit.ablate.grid import RunSpec, cli_runs, load_grid, per_run_actions, run_options
from evalkit.ablate.plots import plot_bpb, plot_frontier, plot_subject
from evalkit.engine.report import markdown_table, provenance, write_json
from evalkit.flags import add_input_args, add_plugin_arg, prepare
from evalkit.ablate.stats import DEFAULT_REPLICATES, DocSums, bpb_interval, compare
from evalkit.strategies.plugins import file_sha256, is_spec
from evalkit.strategies.registry import REGISTRY, build_strategy, check_window_opts, strategy_class

ABLATE_DESTS = frozenset({"grid", "out", "resume", "baseline", "bootstrap", "bootstrap_seed", "utilization"})


def build_parser(prog: str = "python -m evalkit.ablate") -> argparse.ArgumentParser:
    p = CliParser(prog=prog, description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--strategy", action="append", default=None,
                   help="strategy to compare (repeatable; with each --ngram as well), instead of --grid")
    add_plugin_arg(p)
    p.add_argument("--grid", default=None, help="TOML of named runs (see examples/grid.toml)")
    p.add_argument("--baseline", default=None, help="run name the others are compared with (default: the first)")
    p.add_argument("--out", default="ablate_out", help="output directory (default ablate_out)")
    p.add_argument("--resume", action="store_true", help="reuse finished runs from OUT/cache when they match")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_REPLICATES, help="bootstrap replicates (default 9999)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the document resampling (default 0)")
    p.add_argument("--utilization", type=float, default=DEFAULT_UTILIZATION,
                   help="assumed fraction of H100 bf16 peak for the 8xH100 projection (default 0.35)")
    return p


@dataclass
class Planned:
    spec: RunSpec
    opts: argparse.Namespace
    ident: runcache.RunIdentity


def plan_runs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[RunSpec], str]:
    """The runs and the baseline's name, checked before anything is loaded."""
    if args.plugin and not args.grid:
        args.strategy = (args.strategy or []) + args.plugin  # a plugin is one more strategy
    if bool(args.grid) == bool(args.strategy):
        raise EvalkitError("give either --grid FILE.toml or --strategy NAME (repeatable), not both or neither")
    if args.grid and args.plugin:
        raise EvalkitError("--plugin with --grid: put strategy = \"FILE.py:CLASS\" in the grid's [[run]] tables")
    if args.grid:
        if args.ngram:
            raise EvalkitError("--ngram with --grid: put ngram = \"...\" in the grid's [[run]] tables")
        runs, baseline = load_grid(args.grid, per_run_actions(parser, ABLATE_DESTS))
    else:
        runs, baseline = cli_runs(args.strategy, args.ngram), None
    baseline = args.baseline or baseline or runs[0].name
    if len(runs) < 2:
        raise EvalkitError("an ablation compares runs: give at least two (strategies, mixers or grid entries)")
    names = [r.name for r in runs]
    if baseline not in names:
        raise EvalkitError(f"--baseline {baseline}: no such run; choose from {', '.join(names)}")
    for r in runs:
        if is_spec(r.strategy):
            strategy_class(r.strategy)  # a plugin: import it now, one line if it is broken
        elif r.strategy not in REGISTRY:
            raise EvalkitError(f"run {r.name!r}: strategy {r.strategy!r} unknown; choose from "
                               f"{', '.join(sorted(REGISTRY))}")
    if args.bootstrap < 99:
        raise EvalkitError(f"--bootstrap {args.bootstrap}: use at least 99 replicates (9999 for p < 0.01 claims)")
    return runs, baseline


def identify(args, parser, runs: list[RunSpec], loaded, data, info) -> list[Planned]:
    dests = sorted(per_run_actions(parser, ABLATE_DESTS))
    bsha = runcache.bytes_sha256(data.target_bytes)
    planned = []
    for spec in runs:
        opts = run_options(args, spec)
        if opts.seq_len is None:
            opts.seq_len = loaded.config.train_seq_len
        check_window_opts(opts)
        config = {d: getattr(opts, d) for d in dests}
        config.update(world_size=info.world_size, device=info.device.type)
        if is_spec(spec.strategy):  # --resume must not reuse a result of an edited plugin
            config["plugin_sha256"] = file_sha256(spec.strategy)
        config = json.loads(json.dumps(config, default=str))  # as stored: tuples become lists
        planned.append(Planned(spec, opts, runcache.RunIdentity(loaded.sha256, data.sha256, bsha, config)))
    return planned


def groups(pending: list[Planned]) -> list[list[Planned]]:
    """Runs that differ only in their mixer, for window strategies, share one model pass."""
    out: dict[str, list[Planned]] = {}
    for p in pending:
        cfg = {k: v for k, v in p.ident.run_config.items() if k != "ngram"}
        shareable = getattr(strategy_class(p.spec.strategy), "fixed_model", False)
        key = json.dumps(cfg, sort_keys=True) if shareable else p.spec.name
        out.setdefault(key, []).append(p)
    return list(out.values())


def record_of(result, mixer_seconds: float) -> dict:
    return {"summary": result.summary(), "mixer_seconds": mixer_seconds, "per_doc_nll": result.per_doc_nll,
            "per_doc_bytes": result.per_doc_bytes, "per_doc_tokens": result.per_doc_tokens}


def execute(args, planned: list[Planned], loaded, data, info) -> dict[str, dict]:
    """name -> record (summary, mixer seconds, per-document arrays), from cache or fresh."""
    cache_dir = Path(args.out) / "cache"
    cached = {}
    if args.resume and info.is_main:
        n_docs = len(data.doc_starts)
        cached = {p.spec.name: e for p in planned if (e := runcache.load(cache_dir, p.ident, n_docs)) is not None}
    cached = broadcast_object(cached, info)  # every rank must skip the same runs
    records = {}
    for name in cached:
        if info.is_main:
            print(f"{name}: cached")
        records[name] = {**cached[name], "cached": True}
    for group in groups([p for p in planned if p.spec.name not in cached]):
        first = group[0].opts
        torch.manual_seed(first.seed)
        runs = evaluate_many(loaded.model, data, build_strategy(first.strategy, first), info,
                             [p.opts.ngram for p in group], progress=not args.no_progress)
        for p, run in zip(group, runs):
            rec = record_of(run.result, run.mixer_seconds)
            if info.is_main:
                runcache.save(cache_dir, p.ident, rec)
                print(f"{p.spec.name}: val_bpb {run.result.val_bpb:.4f} in {run.result.seconds:.1f} s")
            records[p.spec.name] = {**rec, "cached": False}
    return records


def sums_of(rec: dict) -> DocSums:
    return DocSums(np.asarray(rec["per_doc_nll"], np.float64), np.asarray(rec["per_doc_bytes"], np.int64),
                   np.asarray(rec["per_doc_tokens"], np.int64))


def build_rows(args, planned: list[Planned], records: dict, baseline: str, cfg) -> list[dict]:
    base = sums_of(records[baseline])
    rows = []
    for p in planned:
        rec, s = records[p.spec.name], records[p.spec.name]["summary"]
        sums = sums_of(rec)
        cmp = compare(sums, base, args.bootstrap, args.bootstrap_seed)
        lo, hi = bpb_interval(sums, args.bootstrap, args.bootstrap_seed)
        rows.append({
            "name": p.spec.name, "label": s["strategy"], "val_bpb": s["val_bpb"], "val_loss": s["val_loss"],
            "bpb_ci_low": lo, "bpb_ci_high": hi, "delta_bpb": cmp.delta_bpb, "delta_ci_low": cmp.ci_bpb[0],
            "delta_ci_high": cmp.ci_bpb[1], "p_value": cmp.p_value, "p_value_t": cmp.p_value_t,
            "delta_nats": cmp.delta_nats, "delta_nats_ci_low": cmp.ci_nats[0],
            "delta_nats_ci_high": cmp.ci_nats[1], "p_value_margin": cmp.p_value_margin,
            "seconds": s["seconds"], "tokens_per_s": s["tokens_per_s"], "mixer_seconds": rec["mixer_seconds"],
            "projected_8xh100_s": projected_8xh100_seconds(cfg, s["config"]["strategy"], s["tokens"],
                                                           rec["mixer_seconds"], args.utilization,
                                                           doc_tokens=sums.tokens),
            "tokens": s["tokens"], "bytes": s["bytes"], "docs": cmp.docs, "cached": rec["cached"],
            "unscored": s["coverage"]["unscored"], "ngram_acted": s.get("ngram_acted", ""),
            "ngram_hint_right": s.get("ngram_hint_right", ""), "config": p.ident.run_config})
    return rows


TABLE_COLUMNS = [("name", "strategy", ""), ("val_bpb", "bpb", ".4f"), ("delta", "Δbpb", ""), ("ci", "95% CI", ""),
                 ("p", "p", ""), ("delta_n", "Δnats/tok", ""), ("p_m", "p(gain<0.005 nats)", ""),
                 ("seconds", "seconds", ".1f"), ("tokens_per_s", "tokens/s", ",.0f"),
                 ("projected_8xh100_s", "8×H100 s (proj.)", ",.2f"), ("ngram_acted", "cache acts", ".2%"),
                 ("ngram_hint_right", "hint right", ".1%")]  # one format for 0.06 and 216.20


def table_md(rows: list[dict], baseline: str, args, device: str) -> str:
    cells = []
    for r in rows:
        is_base = r["name"] == baseline
        cells.append({**r, "delta": "baseline" if is_base else f"{r['delta_bpb']:+.4f}",
                      "ci": "" if is_base else f"[{r['delta_ci_low']:+.4f}, {r['delta_ci_high']:+.4f}]",
                      "p": "" if is_base else f"{r['p_value']:.4f}",
                      "delta_n": "" if is_base else f"{r['delta_nats']:+.4f}",
                      "p_m": "" if is_base else f"{r['p_value_margin']:.4f}"})
    docs = rows[0]["docs"]
    foot = (f"\nΔ = run − {baseline}, paired over {docs:,} documents; 95% CI and one-sided p (run not better) "
            f"from {args.bootstrap:,} bootstrap resamples of documents (seed {args.bootstrap_seed}). "
            "p(gain<0.005 nats): probability the mean-NLL gain is below the challenge's 0.005 nats/token.\n"
            f"Seconds measured on {device} (runs sharing a model pass each carry the pass plus their own "
            f"scoring). 8×H100 s (proj.): forward FLOPs × passes over {FULL_SPLIT_TOKENS / 1e6:.2f}M tokens at "
            f"utilization {args.utilization:.2f} of 989 TFLOP/s bf16 per GPU, plus the measured mixer seconds "
            "scaled to the split, not divided over the ranks (each node's one n-gram pass covers the whole "
            f"split on one host thread; measured on {device}, everything the mixer's scoring took there: an "
            "upper bound) (evalkit.engine.cost.projected_8xh100_seconds).\n")
    if docs < 30:  # the bootstrap treats the documents as the population: few make intervals too narrow
        foot += f"Only {docs} documents: intervals and p-values are optimistic; use hundreds for a claim.\n"
    unscored = [r["name"] for r in rows if r["unscored"]]
    if unscored:
        foot += f"Not full-split numbers (targets left unscored): {', '.join(unscored)}.\n"
    return markdown_table(cells, TABLE_COLUMNS) + "\n" + foot


def write_outputs(args, rows: list[dict], records: dict, baseline: str, loaded, data, info) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {
        "baseline": baseline, "results": rows,
        "per_doc": {name: {k: rec[k] for k in ("per_doc_nll", "per_doc_bytes", "per_doc_tokens")}
                    for name, rec in records.items()},
        **provenance(artifact=str(loaded.path), artifact_sha256=loaded.sha256, artifact_bytes=loaded.nbytes,
                     data=data.source, data_sha256=data.sha256, tokenizer=args.tokenizer,
                     model_config=loaded.config.to_dict(), bootstrap=args.bootstrap,
                     bootstrap_seed=args.bootstrap_seed, utilization=args.utilization)})
    flat = [{k: v for k, v in r.items() if k != "config"} for r in rows]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    table = table_md(rows, baseline, args, info.device.type)
    (out / "table.md").write_text(table)
    subject = plot_subject(loaded.path, rows[0]["docs"])
    plot_bpb(rows, baseline, out / "bpb_by_strategy.png", subject)
    plot_frontier(rows, out / "bpb_vs_time.png", subject=subject)
    print(table)
    return out


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> list[dict]:
    parser = parser or build_parser()
    runs, baseline = plan_runs(args, parser)
    info, loaded, data = prepare(args)
    if len(data.doc_starts) < 2:
        raise EvalkitError("--limit-docs: a paired comparison needs at least 2 documents")
    planned = identify(args, parser, runs, loaded, data, info)
    records = execute(args, planned, loaded, data, info)
    if not info.is_main:
        return []
    rows = build_rows(args, planned, records, baseline, loaded.config)
    write_outputs(args, rows, records, baseline, loaded, data, info)
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()

    def body() -> None:
        run(parser.parse_args(argv), parser)

    return run_cli(body, cleanup=shutdown)

