"""One prepared GPU check (benchmarks/gpu_check.sh runs it): <= 8 minutes on one H100/H200.

(a) the test suite's CUDA-marked tests, (b) a full-size preset trained for ~60 s and
exported (GPTQ included), (c) flat, sliding (seq 2048, stride 64), sliding+tilt and ttt
timed on ~4M tokens of that model, with tokens/s and the projection to the full split on
8 GPUs next to the records' times, (e) the scoring head's bf16-vs-fp32 NLL difference;
(d) everything in one JSON. `--dry-run` runs the same steps on CPU at tiny sizes (CI).

Without `--train`/`--val` the data are synthetic (Zipf tokens, documents of ~800
tokens): speed does not depend on the text, and the GPU machine needs no data set.
Prints one line per figure; the last line is the JSON's path.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from evalkit.data.shards import write_shard  # noqa: E402
from evalkit.engine.context import EvalData  # noqa: E402
from evalkit.engine.dist import DistInfo, pick_device  # noqa: E402
from evalkit.engine.fanout import evaluate_many  # noqa: E402
from evalkit.engine.inputs import load_data, load_model  # noqa: E402
from evalkit.engine.loop import evaluate  # noqa: E402
from evalkit.engine.report import versions, write_json  # noqa: E402
from evalkit.flags import compile_model, default_batch_windows  # noqa: E402
from evalkit.strategies.registry import add_common_args, build_strategy  # noqa: E402

# Full validation split sizes (anchors.md) and the records' 8xH100 times for comparison.
FULL_SPLIT = {1024: 62_020_000, 8192: 40_540_000}
RECORDS = {"flat": "6-8 s (seq 2048)",
           "sliding": "70-90 s (seq 2048, stride 64, FA3 + compile)",
           "sliding+tilt": "records' tilt precompute 33 s; TTT + tilt evals 518-533 s",
           "ttt": "~60 s (per-doc LoRA TTT); phased TTT 430-526 s"}
FULL = dict(dry=False, preset="pr1938", scale="full", train_seconds=60.0, batch_tokens=65536, tokens=4_000_000,
            ttt_tokens=4_000_000, seq=2048, stride=64, tilt="tilt:orders=2-11")
DRY = dict(dry=True, preset="pr1938", scale="tiny", train_seconds=3.0, batch_tokens=1024, tokens=3000, ttt_tokens=1500,
           seq=128, stride=32, tilt="tilt:orders=2-5")


def synthetic_stream(n: int, vocab: int, seed: int) -> np.ndarray:
    """Zipf-distributed tokens in documents of ~800 tokens, each starting with BOS (1)."""
    rng = np.random.default_rng(seed)
    tokens = np.minimum(rng.zipf(1.2, n), vocab - 2).astype(np.int64) + 1
    starts = np.cumsum(rng.geometric(1 / 800, n // 200 + 2))
    tokens[0] = 1
    tokens[starts[starts < n]] = 1
    return tokens.astype(np.uint16)


def synthetic_data(n: int, vocab: int, seed: int, uniform: bool = False) -> EvalData:
    """The synthetic stream as a split (1 byte per token); `uniform`: random tokens, the
    only legal warm-up input."""
    tokens = synthetic_stream(n, vocab, seed)
    if uniform:
        tokens = np.where(tokens == 1, 1, np.random.default_rng(seed).integers(2, vocab, n)).astype(np.uint16)
    return EvalData(tokens, np.ones(n, dtype=np.int64), np.flatnonzero(tokens == 1), source="synthetic")


def head(data: EvalData, n: int) -> EvalData:
    """The first n tokens of a split (documents cut at n)."""
    return EvalData(data.tokens[:n], data.target_bytes[:n], data.doc_starts[data.doc_starts < n], data.source)


def cuda_tests(dry: bool) -> dict:
    """(a) pytest -m cuda over the suite; the dry run collects tests/test_cuda.py only (on CPU
    every test is skipped with its reason, and collecting the whole suite costs CI time)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-rs", "-s", "tests/test_cuda.py" if dry else "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", proc.stdout)}
    print(f"(a) cuda tests: {counts} rc {proc.returncode} in {time.perf_counter() - t0:.1f} s")
    return {"rc": proc.returncode, "counts": counts, "seconds": time.perf_counter() - t0,
            "output_tail": proc.stdout[-4000:] + proc.stderr[-2000:]}


def train_and_export(size: dict, train_glob: str | None, out: Path, device: str) -> dict:
    """(b) the preset trained for size['train_seconds'] and exported with its GPTQ."""
    from trainer.config import load_preset
    from trainer.train import build_parser, run
    vocab = load_preset(size["preset"], size["scale"]).model.vocab_size
    if train_glob is None:
        write_shard(out / "synthetic_train_000000.bin", synthetic_stream(2_000_000 if device != "cpu" else 40_000,
                                                                        vocab, seed=1))
        train_glob = str(out / "synthetic_train_*.bin")
    # lzma (stdlib): the check needs no brotli, and brotli-11 on 16 MB would eat the budget
    overrides = [f"max_seconds={size['train_seconds']}", "reserve_seconds=0", "compressor=lzma",
                 f"batch_tokens={size['batch_tokens']}", "log_every=50"]
    if size["dry"]:
        overrides += ["gptq_batches=1"]
    t0 = time.perf_counter()
    record = run(build_parser().parse_args(["--preset", size["preset"], "--scale", size["scale"], "--train",
                                            train_glob, "--out", str(out / "model.ptz"), "--device", device,
                                            "--quiet", *overrides]))
    wall = time.perf_counter() - t0
    stats = record["stats"]
    print(f"(b) trained {size['preset']}/{size['scale']}: {stats['steps']} steps in {stats['train_seconds']} s, "
          f"{stats['tokens_seen']:,} tokens; trained + exported in {wall:.1f} s, "
          f"artifact {record['artifact_bytes']:,} bytes")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"stats": stats, "artifact_bytes": record["artifact_bytes"], "train_and_export_seconds": wall,
            "params": record["params"]}


def strategy_opts(size: dict, batch_windows: int) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_common_args(p)  # every registered strategy's flags, with their defaults
    return p.parse_args(["--seq-len", str(size["seq"]), "--stride", str(size["stride"]),
                         "--batch-windows", str(batch_windows), "--ttt-context", str(size["seq"])])


def row(label: str, result, vocab: int) -> dict:
    tps = result.tokens_per_s
    proj = FULL_SPLIT.get(vocab, FULL_SPLIT[1024]) / (8 * tps)
    print(f"(c) {label:13s} {result.tokens:>10,} tokens {result.seconds:8.1f} s {tps:>12,.0f} tok/s"
          f"  -> full split on 8 GPUs ~{proj:7.1f} s   records: {RECORDS[label]}")
    return {"strategy": label, "tokens": result.tokens, "seconds": result.seconds, "tokens_per_s": tps,
            "val_bpb": result.val_bpb, "projected_8gpu_full_split_s": proj, "records_8xh100": RECORDS[label]}


def time_strategies(size: dict, model, data: EvalData, info: DistInfo, opts, seconds_left: float) -> list[dict]:
    """(c) each strategy once over `data`, after a warm-up on random tokens (cuDNN/allocator,
    Numba's compile), as the challenge allows; sliding and sliding+tilt share one model pass.
    ttt runs last on size['ttt_tokens'], fewer if the budget would not hold them."""
    t0, vocab = time.perf_counter(), model.cfg.vocab_size
    warm = synthetic_data(min(data.n_tokens, 4 * size["seq"]), vocab, seed=99, uniform=True)
    for name, specs in (("flat", [None]), ("sliding", [None, size["tilt"]]), ("ttt", [None])):
        evaluate_many(model, warm, build_strategy(name, opts), info, specs, progress=False)
    rows = [row("flat", evaluate(model, data, build_strategy("flat", opts), info, progress=False)[0], vocab)]
    runs = evaluate_many(model, data, build_strategy("sliding", opts), info, [None, size["tilt"]], progress=False)
    rows += [row("sliding", runs[0].result, vocab), row("sliding+tilt", runs[1].result, vocab)]
    rows[-1]["mixer_seconds"] = runs[1].mixer_seconds
    # TTT scores each chunk of 48 with up to seq tokens of context and trains on it: ~4x
    # sliding's cost per token (forward + LoRA backward at stride 48 instead of 64).
    left = seconds_left - (time.perf_counter() - t0)
    fit = int(0.8 * max(left, 0) * rows[1]["tokens_per_s"] / 4)
    n_ttt = max(min(size["ttt_tokens"], fit), min(size["ttt_tokens"], 20 * size["seq"]))
    rows.append(row("ttt", evaluate(model, head(data, n_ttt), build_strategy("ttt", opts), info,
                                    progress=False)[0], vocab))
    return rows


def head_precision(model, data: EvalData, seq: int, device: torch.device) -> dict:
    """(e) NLL from a bf16 head vs the fp32 head on the same bf16-autocast hidden states."""
    n = min(8, (data.n_tokens - 1) // seq)
    ids = torch.from_numpy(data.tokens[:n * seq + 1].astype(np.int64)).to(device)
    x, y = ids[:-1].view(n, seq), ids[1:].view(n, seq)
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16):
        h = model.hidden(x)  # (n, T, d)
        nll = [torch.nn.functional.cross_entropy(model.head(h, fp32=f).float().flatten(0, 1), y.flatten(),
                                                 reduction="none").double() for f in (False, True)]
    diff = (nll[0] - nll[1]).abs()
    out = {"tokens": int(y.numel()), "mean_nll_fp32_head": float(nll[1].mean()),
           "mean_nll_bf16_head": float(nll[0].mean()), "mean_abs_diff": float(diff.mean()),
           "max_abs_diff": float(diff.max())}
    print(f"(e) head precision over {out['tokens']:,} tokens: mean NLL fp32 {out['mean_nll_fp32_head']:.5f} "
          f"bf16 {out['mean_nll_bf16_head']:.5f}; per-token |diff| mean {out['mean_abs_diff']:.2e} "
          f"max {out['max_abs_diff']:.2e} nats")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
    p.add_argument("--out", default="runs/gpu_check", help="directory for the artifact and gpu_check.json")
    p.add_argument("--train", default=None, help="training shard glob (default: synthetic)")
    p.add_argument("--val", default=None, help="validation shard glob (default: synthetic); needs --tokenizer")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--tokens", type=int, default=None, help="tokens timed per strategy (default 4M; dry 3000)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model before timing (time apart)")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--budget-seconds", type=float, default=450.0,
                   help="ttt is cut to what fits in what is left of this (default 450: the script stays < 8 min)")
    args = p.parse_args(argv)
    size = dict(DRY if args.dry_run else FULL)
    if args.tokens:
        size["tokens"] = size["ttt_tokens"] = args.tokens
    device = pick_device("cpu" if args.dry_run else "auto")
    if not args.dry_run and device.type != "cuda":
        sys.exit("error: gpu_check: no CUDA device; use --dry-run on CPU")
    torch.set_num_threads(1 if args.dry_run else torch.get_num_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    record: dict = {"mode": "dry-run" if args.dry_run else "gpu", "device": str(device), "versions": versions(),
                    "sizes": size}
    record["cuda_tests"] = None if args.skip_tests else cuda_tests(args.dry_run)
    record["train"] = train_and_export(size, args.train, out, device.type)
    loaded = load_model(str(out / "model.ptz"), device)
    model, vocab = loaded.model.eval(), loaded.config.vocab_size
    if args.val:
        data = head(load_data(args.val, args.tokenizer, vocab, None, None), size["tokens"])
    else:
        data = synthetic_data(size["tokens"], vocab, seed=2)
    info = DistInfo(0, 1, device)
    batch_windows = default_batch_windows(loaded.config, size["seq"], device)
    record["batch_windows"] = batch_windows
    print(f"batch windows {batch_windows} (seq {size['seq']}) on {device}")
    record["compile_seconds"] = None
    if args.compile:
        record["compile_seconds"] = compile_model(model, size["seq"], batch_windows, device)
        print(f"compile + warm-up: {record['compile_seconds']:.1f} s (not in any timing)")
    record["head_precision"] = head_precision(model, data, size["seq"], device)
    left = args.budget_seconds - (time.perf_counter() - t0)
    record["strategies"] = time_strategies(size, model, data, info, strategy_opts(size, batch_windows), left)
    record["total_seconds"] = time.perf_counter() - t0
    write_json(out / "gpu_check.json", record)
    print(f"total {record['total_seconds']:.1f} s")
    print(out / "gpu_check.json")


if __name__ == "__main__":
    main()
