"""CI runs benchmarks/gpu_check.sh --dry-run (CPU, tiny sizes) so the GPU script never rots."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    print(proc.stdout)
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path / "gpu_check.json")
    rec = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rec["mode"] == "dry-run" and rec["cuda_tests"]["rc"] == 0
    assert rec["cuda_tests"]["counts"].get("failed", 0) == 0 and sum(rec["cuda_tests"]["counts"].values()) >= 5
    assert rec["train"]["stats"]["steps"] >= 1 and rec["train"]["artifact_bytes"] > 0
    assert [r["strategy"] for r in rec["strategies"]] == ["flat", "sliding", "sliding+tilt", "ttt"]
    for r in rec["strategies"]:
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["projected_8gpu_full_split_s"] > 0
    assert rec["head_precision"]["max_abs_diff"] < 0.1
    for key in ("device_name", "cuda", "cudnn", "nccl", "flash_attn"):
        assert key in rec["versions"]
