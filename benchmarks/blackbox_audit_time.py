"""Black-box audit time on CPU for the submission-shaped example (examples/submission).

Trains the example entry briefly on documents 100+ of the shared split, exports it, then
runs `python -m evalkit.audit --score-fn examples/submission/evalkit_score_fn.py:score`
with the default audit settings (8 documents x 512 tokens, 3 normalization positions) for
its hashed count-ratio cache and its normalized tilt, and prints each verdict, the
normalization sums and the seconds. Last line: seconds of the tilt audit (all checks).

    python benchmarks/blackbox_audit_time.py [--vocab 1024|8192] [--norm-positions 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = {1024: ("fineweb_verify200_sp1024_val_000000.bin", "fineweb_1024_bpe.model"),
        8192: ("fineweb_verify200_sp8192_val_000000.bin", "fineweb_8192_bpe.model")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=1024, choices=sorted(DATA))
    ap.add_argument("--norm-positions", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from evalkit.data.shards import doc_starts, load_stream

    shard, tok = SHARED / "corpus" / "shards" / DATA[args.vocab][0], SHARED / "tokenizers" / DATA[args.vocab][1]
    spec = importlib.util.spec_from_file_location("entry", ROOT / "examples" / "submission" / "train_gpt_mini.py")
    e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e)
    h = e.Hyperparameters()
    h.vocab_size, h.iterations = args.vocab, 40
    tokens = load_stream(str(shard))
    model = e.train(h, tokens[doc_starts(tokens)[100]:])
    out = Path(tempfile.mkdtemp()) / "final_model.int6.ptz"
    print(f"export {out}: {e.export(model, str(out)):,} bytes; load {os.getloadavg()[0]:.1f} (1-min)")
    env = {**os.environ, "ARTIFACT": str(out), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    seconds = {}
    for ngram in ("hashed", "tilt"):
        t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        res = subprocess.run([sys.executable, "-m", "evalkit.audit", "--score-fn",
                              "examples/submission/evalkit_score_fn.py:score", "--val", str(shard), "--tokenizer",
                              str(tok), "--norm-positions", str(args.norm_positions)],
                             env={**env, "NGRAM": ngram}, cwd=ROOT, capture_output=True, text=True)
        seconds[ngram] = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
        norm = next((ln for ln in res.stdout.splitlines() if ln.startswith("| normalization")), res.stderr)
        cost = next((ln for ln in res.stdout.splitlines() if ln.startswith("normalization cost")), "")
        verdict = re.search(r"\| (PASS|FAIL|n/a) \| (.*) \| (.*) \|$", norm)
        print(f"{ngram}: exit {res.returncode}, normalization {verdict.group(1) if verdict else '?'}, "
              f"{seconds[ngram]:.1f} s wall, {cpu:.1f} s CPU, load {os.getloadavg()[0]:.1f}\n"
              f"  {verdict.group(3) if verdict else norm}\n  {cost}")
    print(f"blackbox_audit_seconds_v{args.vocab}_tilt {seconds['tilt']:.1f}")


if __name__ == "__main__":
    main()
