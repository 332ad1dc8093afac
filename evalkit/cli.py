"""What every evalkit command line shares: bad input is one line and exit code 2.

`CliParser` turns argparse's usage errors into `EvalkitError`; `run_cli` runs a command's
body and turns any `EvalkitError` into `error: <message>` on stderr and exit code 2,
never a traceback. `set_threads` is the one CPU thread policy every command applies.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from evalkit.errors import EXIT_BAD_INPUT, EvalkitError


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors become EvalkitError: one line on stderr, exit 2."""

    def error(self, message: str):
        raise EvalkitError(f"{self.prog}: {message}")


def run_cli(body: Callable[[], int | None], cleanup: Callable[[], None] | None = None) -> int:
    """Run `body` (which parses its arguments and does the work); its return value, or 0,
    is the exit code; EvalkitError -> one line on stderr and EXIT_BAD_INPUT."""
    try:
        rc = body()
        flush_notes()
        return 0 if rc is None else int(rc)
    except EvalkitError as e:
        _NOTES.clear()  # bad input: the error is the only line
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if cleanup is not None:
            cleanup()


# ---------------------------------------------------------------- CPU threads
# torch's default (every logical CPU per process) is fine on an idle machine and several
# times slower when other jobs, or other ranks, share the cores; so every command picks
# a count itself, says which in one line, and `--threads N` overrides it.


def usable_cores() -> int:
    """Physical cores this process may run on (affinity, cgroup quota, SMT siblings)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:  # SMT siblings share a core: count each core once
        try:
            with open(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(c))
    n = len(cores)
    try:  # a container's CPU quota (cgroup v2): "max 100000" or "200000 100000"
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def thread_policy(requested: int | None = None) -> tuple[int, str]:
    """(threads per process, why): `requested` if given; else usable cores divided by the
    local processes (torchrun's LOCAL_WORLD_SIZE), and 1 when the 1-minute load average
    already fills the cores (oversubscribing a busy CPU is slower than one thread)."""
    if requested is not None:
        if requested < 1:
            raise EvalkitError(f"--threads {requested}: must be >= 1")
        return requested, "--threads"
    cores = usable_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= cores:
        return 1, f"{cores} cores busy (load {load:.1f}): 1 per process"
    per = max(1, cores // local)
    return per, f"{cores} cores / {local} local process{'es' if local > 1 else ''}, load {load:.1f}"


def set_threads(requested: int | None = None, defer: bool = False) -> int:
    """Apply thread_policy to torch and say the choice in one line on stderr (rank 0 only);
    `defer`: once evaluation starts (see `announce_line`)."""
    import torch  # lazily: data and model commands that never run a model do not pay for it

    n, why = thread_policy(requested)
    torch.set_num_threads(n)
    tail = "" if why == "--threads" else "; --threads N overrides"
    announce_line(f"threads: {n} ({why}{tail})", defer=defer)
    return n


_NOTES: list[str] = []  # informational lines held back until the work starts


def announce_line(line: str, defer: bool = False) -> None:
    """One informational line on stderr, from rank 0 only. `defer`: hold it until
    `flush_notes` (the engine calls it when evaluation starts), so that a command that
    stops on bad input prints its one error line and nothing else."""
    if defer:
        _NOTES.append(line)
    elif os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


def flush_notes() -> None:
    """Print the deferred informational lines (once)."""
    while _NOTES:
        announce_line(_NOTES.pop(0))
