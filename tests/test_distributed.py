"""2 gloo processes under torchrun give the one-process result, n-gram mixers included."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import SP1024, VAL1024, free_port, require_shared



def run_score(artifact, out, nproc, *extra):
    args = ["-m", "evalkit.score", str(artifact), "--val", str(VAL1024), "--tokenizer", str(SP1024),
            "--limit-docs", "4", "--seq-len", "64", "--stride", "32", "--batch-windows", "3", "--threads", "1",
            "--no-progress", "--json", str(out), *extra]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())] + args
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())["results"]


@pytest.mark.parametrize("extra", [
    ("--strategy", "flat", "--strategy", "sliding"),
    ("--strategy", "sliding", "--doc-isolated"),
    ("--strategy", "sliding", "--ngram", "mix:orders=2-5", "--ngram", "tilt:orders=2-5"),
], ids=["flat+sliding", "doc-isolated", "ngram"])
def test_two_processes_equal_one(tmp_path, tiny_artifact, extra):
    require_shared()
    one = run_score(tiny_artifact, tmp_path / "one.json", 1, *extra)
    two = run_score(tiny_artifact, tmp_path / "two.json", 2, *extra)
    for a, b in zip(one, two):
        # the node's one cache learns in plan order, whichever rank scores: same numbers
        assert a["val_bpb"] == pytest.approx(b["val_bpb"], rel=1e-12), (a, b)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-12)
        assert (a["tokens"], a["bytes"], a["coverage"]) == (b["tokens"], b["bytes"], b["coverage"])
        assert b["config"]["world_size"] == 2 and b["compile_seconds"] >= 0


def test_share_ngram_is_gone_with_one_line(tmp_path, tiny_artifact, capsys):
    require_shared()
    from evalkit.score import main

    rc = main([str(tiny_artifact), "--val", str(VAL1024), "--tokenizer", str(SP1024), "--share-ngram"])
    err = capsys.readouterr().err
    assert rc == 2 and "--share-ngram: removed" in err and err.count("\n") == 1
