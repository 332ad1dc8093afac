"""Time `python -m evalkit.audit`: a default audit of one strategy on a demo-sized model,
and the self-test matrix.

    .venv/bin/python benchmarks/audit_time.py [--artifact A.ptz --val GLOB --tokenizer M]
                                              [--skip-self-test] [-- audit flags, e.g. --strategy ttt]

Without --artifact it writes a demo-sized model (the `demo` preset's shape: 4 layers x 192,
vocab 1024, seq 256, random weights at a trained model's logit scale) and audits it on
../shared's sp1024 shard. Prints, per check, the positions and documents it tried, its
runs and seconds. Limits (issue 12): audit <= 180 s, self-test <= 300 s on 2 CPU cores.
Exits 1 if a run is over its limit. The last line is the headline.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
AUDIT_LIMIT_S, SELFTEST_LIMIT_S = 180.0, 300.0


def demo_sized_artifact(path: Path) -> Path:
    from evalkit.audit.selftest import random_artifact
    from evalkit.model.gpt import GPTConfig

    cfg = GPTConfig(vocab_size=1024, num_layers=4, model_dim=192, num_heads=4, num_kv_heads=2, mlp_mult=2.0,
                    train_seq_len=256)
    random_artifact(path, cfg)
    return path


def timed(argv: list[str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the child, exit code, output): CPU seconds stay meaningful on a busy box."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "evalkit.audit", *argv], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return time.perf_counter() - t0, cpu, p.returncode, p.stdout + p.stderr


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact")
    ap.add_argument("--val", default=str(SHARED / "corpus" / "shards" / "fineweb_verify200_sp1024_val_000000.bin"))
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "fineweb_1024_bpe.model"))
    ap.add_argument("--skip-self-test", action="store_true")
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs "
          "(shared: times are upper bounds)")
    with tempfile.TemporaryDirectory() as tmp:
        art = args.artifact or str(demo_sized_artifact(Path(tmp) / "demo_sized.ptz"))
        out = Path(tmp) / "audit.json"
        label = extra or ["--strategy", "sliding"]
        seconds, cpu, rc, text = timed([art, "--val", args.val, "--tokenizer", args.tokenizer, "--threads", "1",
                                   "--no-progress", "--json", str(out), *label])
        if not out.exists():
            print(text[-2000:])
            return 1
        report = json.loads(out.read_text())
        print(f"audit of {report['subject']} on {report['audited_tokens']:,} tokens, "
              f"{report['audited_docs']} documents:")
        for c in report["checks"]:
            print(f"  {c['name']:<20} {c['status']:<13} {c['positions']:>6} positions {c['docs']:>4} documents "
                  f"{c['runs']:>3} runs {c['seconds']:>7.1f} s")
    audit_line = (f"audit {' '.join(label)}: {seconds:.1f} s wall, {cpu:.1f} s CPU (exit {rc}; "
                  f"limit {AUDIT_LIMIT_S:.0f} s)")
    over = seconds > AUDIT_LIMIT_S
    st_line = ""
    if not args.skip_self_test:
        st, st_cpu, st_rc, _ = timed(["--self-test"])
        over |= st > SELFTEST_LIMIT_S
        st_line = f"; self-test {st:.1f} s wall, {st_cpu:.1f} s CPU (exit {st_rc}; limit {SELFTEST_LIMIT_S:.0f} s)"
    print(audit_line + st_line)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
