"""Overlap: the host scores batch k (n-gram mixer, ledger) while the device runs batch k+1.

A strategy hands each batch's log-prob rows to `HostScorer.submit`. On the caller's thread
the ledger records the scores as fixed and the rows are copied (`EvalContext.fix_scores`);
ONE worker thread then computes them (`ctx.score`'s second half: the node table's aux or
this process's mixer, the ledger's numbers) in submission order, so a mixer still learns
positions in plan order, every score is the serial loop's, bit for bit, and the ledger's
timeline is the serial loop's, event for event (tests/test_overlap.py).
Window strategies run the model on the next batch meanwhile; TTT trains its adapters on
the chunk just fixed (its rows are the engine's copy: the step cannot reach them) and
runs the next chunk's forward. At most `DEPTH` batches are in flight: a double
buffer, the (n, V) rows of two batches alive on the device at once. The Numba kernels
release the GIL, so the worker's n-gram work runs beside the main thread's model calls.

On CUDA the worker reads the rows on its own stream, after an event recorded where they
were made: its small gathers and (n,) copies to the host do not queue behind the next
batch's forward, and the main thread never waits for the GPU to hand rows over.
"""
from __future__ import annotations

import contextvars
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

DEPTH = 2  # batches in flight; 0 = score inline (the serial loop)


class HostScorer:
    """Context manager: `submit(positions, logp)` per batch this rank scores, in plan order;
    leaving waits for all."""

    def __init__(self, ctx, depth: int | None = None):
        self.ctx, self.depth = ctx, DEPTH if depth is None else depth
        self.pending: deque[Future] = deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="evalkit-score") if self.depth else None
        cuda = self.pool is not None and ctx.device.type == "cuda"
        self.stream = torch.cuda.Stream(ctx.device) if cuda else None

    def submit(self, positions: np.ndarray, logp: torch.Tensor) -> None:
        """Fix the batch's scores in the ledger now (`EvalContext.fix_scores`: the rows are
        copied, so the caller may train on these tokens at once); compute them on the worker."""
        if self.pool is None:
            self._run(self._fix(positions, logp), None)
            return
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()  # re-raises the worker's error here
        job = self._fix(positions, logp)
        event = None
        if self.stream is not None:
            event = torch.cuda.Event()
            event.record()  # on the main thread's stream, after the kernels that made the rows (and their copy)
        # the worker runs in a copy of this context: context variables (the audit's probe
        # capture, evalkit.engine.probes) reach the scoring there as they would inline
        self.pending.append(self.pool.submit(contextvars.copy_context().run, self._run, job, event))

    def _fix(self, positions: np.ndarray, logp: torch.Tensor):
        return self.ctx.fix_scores(positions, logp, copy=self.pool is not None)

    def _run(self, job, event) -> None:
        with torch.inference_mode():  # grad mode is per thread
            if event is None:
                job()
                return
            self.stream.wait_event(event)
            with torch.cuda.stream(self.stream):
                job()  # the rows' memory waits for this stream (EvalContext._settle)

    def __enter__(self) -> "HostScorer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            while self.pending:
                future = self.pending.popleft()
                if exc_type is None:
                    future.result()
                else:  # already failing: let the worker finish, keep the first error
                    future.exception()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
