"""Overlap: the host scores batch k (n-gram mixer, ledger) while the device runs batch k+1.

A window strategy hands each batch's log-prob rows to `HostScorer.submit`; ONE worker
thread runs `ctx.score` for the batches in submission order,
so a mixer still learns positions in plan order and every score is the serial loop's,
bit for bit (tests/test_overlap.py). At most `DEPTH` batches are in flight: a double
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
        if self.pool is None:
            self._score(positions, logp, None)
            return
        event = None
        if self.stream is not None:
            event = torch.cuda.Event()
            event.record()  # on the main thread's stream, after the kernels that made logp
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()  # re-raises the worker's error here
        # the worker runs in a copy of this context: context variables (the audit's probe
        # capture, evalkit.engine.probes) reach ctx.score there as they would inline
        self.pending.append(self.pool.submit(contextvars.copy_context().run, self._score, positions, logp, event))

    def _score(self, positions: np.ndarray, logp: torch.Tensor, event) -> None:
        with torch.inference_mode():  # grad mode is per thread
            if event is None:
                self._score_now(positions, logp)
                return
            self.stream.wait_event(event)
            with torch.cuda.stream(self.stream):
                self._score_now(positions, logp)
            logp.record_stream(self.stream)  # its memory is not reused before this stream is done

    def _score_now(self, positions: np.ndarray, logp: torch.Tensor) -> None:
        if positions.size:
            self.ctx.score(positions, logp)

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
