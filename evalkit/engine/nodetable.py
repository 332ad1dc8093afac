"""One n-gram table per node: the owner's pass, every rank's reads (README "One n-gram table per node").

An n-gram cache's aux (`caches.mixer.Aux`: what scoring a position needs from the counts)
depends on the token stream and the learning order alone, never on the model. So one
process per node, local rank 0 (the owner), binds the one table and runs `advance` over
every position of the split in the strategy's learning order (`learning_order(data)`: the
plan's one-process order) on a background thread; it writes each position's aux into rows
indexed by position and then a watermark (steps of that order done). A rank's
`EvalContext.score` waits until the watermark passes its positions, reads their rows and
calls the pure `combine` with its own device-computed log-probs (evalkit.engine.mixing).
Other ranks hold no table and never run a Numba kernel; scores equal the one-process ones
by construction (the owner's order is the one-process order).

Between processes the rows live in a file under /dev/shm (or $EVALKIT_SHM_DIR) that the
owner creates, every local rank maps, and the owner unlinks as soon as all have mapped it:
after that no name is left behind, however the processes end (the kernel frees the memory
with the last mapping). The watermark is written and read under `flock`: the lock is the
memory barrier that makes rows written before the watermark visible to a reader that saw
it. One process: anonymous memory, no file. Mixers whose aux agree (same orders, kind and
gate: `aux_key`, e.g. an ablation over beta) share one pass.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import socket
import threading
import time
import uuid

import numpy as np
import torch.distributed as dist

from evalkit.engine.dist import DistInfo, all_reduce_sum, broadcast_object
from evalkit.engine.ledger import LedgerViolation
from evalkit.errors import EvalkitError

HEADER = 16  # int64 fields: state, watermark, steps, owner pid, message length
MESSAGE = 1024  # bytes of the owner's error message
READY, FAILED = 1, -1
FIRST_CHUNK, MAX_CHUNK = 4096, 1 << 16  # positions per advance call (doubling): the first rows come fast


def local_group(info: DistInfo) -> tuple[int, int, int]:
    """(local rank, local world size, global rank of the local owner): torchrun's
    LOCAL_RANK / LOCAL_WORLD_SIZE (ranks of a node are contiguous), else the ranks that
    share this host name (a process group started without torchrun)."""
    if not info.distributed:
        return 0, 1, 0
    if "LOCAL_RANK" in os.environ and "LOCAL_WORLD_SIZE" in os.environ:
        local = int(os.environ["LOCAL_RANK"])
        return local, int(os.environ["LOCAL_WORLD_SIZE"]), info.rank - local
    hosts: list = [None] * info.world_size
    dist.all_gather_object(hosts, socket.gethostname())
    same = [r for r, h in enumerate(hosts) if h == hosts[info.rank]]
    return same.index(info.rank), len(same), same[0]


def shm_dir() -> str:
    return os.environ.get("EVALKIT_SHM_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")


class AuxRows:
    """Header + (N,) step, out_i, out_f rows in one mapping (a shared file or anonymous)."""

    def __init__(self, n: int, buf: mmap.mmap, fd: int | None, path: str | None, owner: bool):
        self.n, self.buf, self.fd, self.path, self.owner = n, buf, fd, path, owner
        self.head = np.frombuffer(buf, np.int64, HEADER, 0)
        self.msg = np.frombuffer(buf, np.uint8, MESSAGE, 8 * HEADER)
        off = 8 * HEADER + MESSAGE
        self.step = np.frombuffer(buf, np.int64, n, off)  # (N,) step of each position in the order, -1 none
        self.out_i = np.frombuffer(buf, np.int64, n, off + 8 * n)  # (N,)
        self.out_f = np.frombuffer(buf, np.float64, 2 * n, off + 16 * n).reshape(n, 2)  # (N, 2)

    @staticmethod
    def nbytes(n: int) -> int:
        return 8 * HEADER + MESSAGE + 32 * n

    @classmethod
    def create(cls, n: int, path: str | None) -> "AuxRows":
        size = cls.nbytes(n)
        if path is None:
            return cls(n, mmap.mmap(-1, size), None, None, True)
        free = shutil.disk_usage(os.path.dirname(path)).free
        if free < size:
            raise EvalkitError(f"--ngram: the node's shared n-gram rows need {size / 2**30:.2f} GiB in "
                               f"{os.path.dirname(path)}, {free / 2**30:.2f} GiB free; enlarge it (docker: "
                               "--shm-size) or point EVALKIT_SHM_DIR at a larger tmpfs")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, size)
        return cls(n, mmap.mmap(fd, size), fd, path, True)

    @classmethod
    def attach(cls, n: int, path: str) -> "AuxRows":
        fd = os.open(path, os.O_RDWR)
        return cls(n, mmap.mmap(fd, cls.nbytes(n)), fd, path, False)

    def unlink(self) -> None:
        if self.owner and self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def _locked(self, mode: int):
        return _Flock(self.fd if self.fd is not None and (mode == fcntl.LOCK_EX or not self.owner) else None, mode)

    def publish(self, done: int) -> None:
        with self._locked(fcntl.LOCK_EX):
            self.head[1] = done

    def fail(self, message: str) -> None:
        raw = message.encode()[:MESSAGE]
        with self._locked(fcntl.LOCK_EX):
            self.msg[:len(raw)] = np.frombuffer(raw, np.uint8)
            self.head[4] = len(raw)
            self.head[0] = FAILED

    def watermark(self) -> tuple[int, int]:
        with self._locked(fcntl.LOCK_SH):
            return int(self.head[0]), int(self.head[1])

    def message(self) -> str:
        return bytes(self.msg[:int(self.head[4])]).decode(errors="replace")

    def close(self) -> None:
        self.unlink()
        self.head = self.msg = self.step = self.out_i = self.out_f = None
        try:
            self.buf.close()
        except BufferError:  # a caller still holds a view: the mapping goes with it
            pass
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Flock:
    def __init__(self, fd: int | None, mode: int):
        self.fd, self.mode = fd, mode

    def __enter__(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, self.mode)

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


class NodePass:
    """One table's pass on the owner (a thread) and its rows, read by every local rank."""

    def __init__(self, rows: AuxRows, tokens: np.ndarray, label: str, mixer=None, order=None):
        self.rows, self.tokens, self.label = rows, tokens, label
        self.mixer, self.order = mixer, order  # owner only
        self.steps = int(rows.head[2])
        self.seconds = 0.0  # owner: wall time of the pass
        self.waited = 0.0  # seconds this process's scoring waited for the watermark
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        if self.mixer is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="evalkit-node-table", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        t0, done, k = time.perf_counter(), 0, FIRST_CHUNK
        try:
            while done < self.steps and not self._stop.is_set():
                chunk = self.order[done:done + k]
                aux = self.mixer.advance(chunk)  # each position's aux from the state before it, then learn it
                self.rows.out_i[chunk] = aux.out_i
                self.rows.out_f[chunk] = aux.out_f
                done += chunk.size
                self.rows.publish(done)
                k = min(2 * k, MAX_CHUNK)
            if done < self.steps:  # stopped early (this process's run ended): the ranks still waiting raise
                self.rows.fail(f"the owner's run ended at step {done} of {self.steps}")
        except BaseException as e:  # reaches every rank through the header, and this one through close()
            self._error = e
            self.rows.fail(f"{type(e).__name__}: {e}")
        self.seconds = time.perf_counter() - t0
        self.order = None  # (M,) int64: 0.5 GB at 62M tokens, not needed any more

    def steps_of(self, positions: np.ndarray) -> np.ndarray:
        """int64 (n,) step of the owner's timeline at which each position is learned (known
        from the start: no wait); raises for a position outside the learning order."""
        steps = self.rows.step[positions]
        if (steps < 0).any():
            p = int(positions[np.argmax(steps < 0)])
            raise LedgerViolation(f"{self.label}: scored position {p}, which is not in the strategy's "
                                  "learning_order(data): its cache never learns it")
        return steps

    def read(self, positions: np.ndarray, steps: np.ndarray):
        """Aux of `positions` (at `steps`), once the owner's watermark has passed them."""
        from caches.mixer import Aux  # caches knows no torch; import on demand

        self.waited += self._wait(int(steps.max()) + 1)
        return Aux(self.tokens[positions].astype(np.int64), self.rows.out_i[positions], self.rows.out_f[positions])

    def _wait(self, need: int) -> float:
        """Seconds spent until the watermark reached `need` steps."""
        pause, pid, t0 = 5e-5, int(self.rows.head[3]), time.monotonic()
        checked = t0
        while True:
            state, done = self.rows.watermark()
            if done >= need:
                return time.monotonic() - t0
            if state == FAILED:
                if self._error is not None:  # the owner: its pass's own error
                    raise self._error
                raise RuntimeError(f"{self.label}: the node's n-gram pass failed: {self.rows.message()}")
            if self.mixer is None and time.monotonic() - checked > 0.2:
                checked = time.monotonic()
                if not _alive(pid):
                    raise RuntimeError(f"{self.label}: the node's n-gram owner (pid {pid}) exited before "
                                       f"step {need} of {self.steps}")
            time.sleep(pause)
            pause = min(2 * pause, 2e-3)

    def join(self) -> None:
        """Wait for the owner's pass to end; re-raises its error."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        """Stop and join the pass (owner), unmap the rows (idempotent; errors are `join`'s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.rows is not None:
            self.rows.close()
            self.rows = None

    def stats(self) -> dict | None:
        return self.mixer.stats() if self.mixer is not None else None

    def memory_bytes(self) -> int:
        return int(self.mixer.memory_bytes()) if self.mixer is not None else 0


def _alive(pid: int) -> bool:
    """Whether process `pid` (on this node) still runs: not gone, not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


class NodeTable:
    """What a context scores through: a combiner (the spec's pure half) and its node's pass."""

    def __init__(self, combiner, shared: NodePass, counts_here: bool):
        self.combiner, self.shared, self.counts_here = combiner, shared, counts_here
        self.name, self.spec = combiner.name, combiner.spec
        self.needs_entropy = combiner.needs_entropy
        self.waited = self.read_seconds = 0.0

    @property
    def owner(self) -> bool:
        return self.shared.mixer is not None

    def memory_bytes(self) -> int:
        """Bytes of this process's n-gram table: the owner's, 0 on the other ranks."""
        return self.shared.memory_bytes()

    def steps_of(self, positions: np.ndarray) -> np.ndarray:
        return self.shared.steps_of(positions)

    def read(self, positions: np.ndarray, steps: np.ndarray):
        t0, waited = time.perf_counter(), self.shared.waited
        out = self.shared.read(positions, steps)
        self.waited += self.shared.waited - waited
        self.read_seconds += time.perf_counter() - t0
        return out

    def host_seconds(self) -> float:
        """This table's n-gram time as if alone: its pass (on the owner) plus reading rows,
        not the waits for the pass (those are the pass's own time, overlapped)."""
        return self.shared.seconds + self.read_seconds - self.waited

    def hint_tokens(self, aux):
        return self.combiner.hint_tokens(aux)

    def combine(self, aux, target_logp, hint_logp, entropy):
        return self.combiner.combine(aux, target_logp, hint_logp, entropy)

    def stats(self) -> dict:
        """The pass's counts on global rank 0 (an owner), zeros elsewhere: sums over ranks
        are the split's, whatever the number of nodes."""
        s = self.shared.stats() if self.counts_here else None
        return s or {"positions": 0, "acted": 0, "hint_right": 0}


def start(tables: list[NodeTable]) -> None:
    for p in _passes(tables):
        p.start()


def join(tables: list[NodeTable]) -> None:
    for p in _passes(tables):
        p.join()


def close(tables: list[NodeTable]) -> None:
    """Stop and unmap every pass (idempotent)."""
    for p in _passes(tables):
        p.close()


def _passes(tables: list[NodeTable]) -> list[NodePass]:
    return list({id(t.shared): t.shared for t in tables if t is not None}.values())


def open_tables(specs: list[str], vocab_size: int, tokens: np.ndarray, starts: np.ndarray | None, learning_order,
                info: DistInfo, label: str) -> list[NodeTable]:  # label: the strategy's, for messages
    """One NodeTable per spec (specs with equal `aux_key` share a pass); `starts`: how far
    back each position's contexts may read (loop.context_start); `learning_order()`
    gives the int64 positions in the order the cache learns them (called on owners only).
    Every rank calls this at the same point (it runs collectives); nothing starts yet."""
    from caches.mixer import parse_ngram_combiner, parse_ngram_spec  # caches knows no torch

    try:
        combiners = [parse_ngram_combiner(vocab_size, s) for s in specs]  # the same error on every rank
    except ValueError as e:
        raise EvalkitError(str(e)) from None
    local, local_world, owner_rank = local_group(info)
    run_id = broadcast_object(uuid.uuid4().hex[:16], info) if info.distributed else ""
    keys = list(dict.fromkeys(c.aux_key for c in combiners))
    paths = [None if local_world == 1 else os.path.join(shm_dir(), f"evalkit-{run_id}-{owner_rank}-{i}")
             for i in range(len(keys))]
    passes: list[NodePass] = []
    try:
        error = None
        try:
            if local == 0:
                order = _checked(learning_order(), tokens.shape[0], label)
                for key, path in zip(keys, paths):
                    first = next(c for c in combiners if c.aux_key == key)
                    rows = AuxRows.create(tokens.shape[0], path)
                    passes.append(_owner_pass(first, rows, order, tokens, starts, f"{label}+{first.name}",
                                              vocab_size, parse_ngram_spec))
        except (EvalkitError, LedgerViolation, OSError, ValueError) as e:
            error = e
        _agree(error, info, "could not set up the node's n-gram table")
        try:
            if local != 0:
                for key, path in zip(keys, paths):
                    first = next(c for c in combiners if c.aux_key == key)
                    passes.append(NodePass(AuxRows.attach(tokens.shape[0], path), tokens, f"{label}+{first.name}"))
        except OSError as e:
            error = EvalkitError(f"--ngram: could not map the node's n-gram rows {e.filename}: {e.strerror}")
        _agree(error, info, "could not map the node's n-gram rows")
    except BaseException:
        for p in passes:
            p.close()
        raise
    finally:  # every local rank has mapped the rows (or failed): no name outlives this call
        for p in passes:
            if p.rows is not None:
                p.rows.unlink()
    by_key = dict(zip(keys, passes))
    return [NodeTable(c, by_key[c.aux_key], counts_here=info.rank == 0) for c in combiners]


def _owner_pass(combiner, rows: AuxRows, order: np.ndarray, tokens: np.ndarray, starts: np.ndarray | None,
                label: str, vocab_size: int, parse) -> NodePass:
    """The owner's side: the rows' steps and header, and the one bound table."""
    try:
        rows.step[:] = -1
        rows.step[order] = np.arange(order.size, dtype=np.int64)
        rows.head[:4] = (READY, 0, order.size, os.getpid())
        mixer = parse(vocab_size, combiner.spec)
        mixer.bind(tokens, starts)
    except BaseException:
        rows.close()
        raise
    return NodePass(rows, tokens, label, mixer, order)


def _agree(error: BaseException | None, info: DistInfo, what: str) -> None:
    """Collective: raise on every rank when any failed (this rank's own error where it had one)."""
    failed = all_reduce_sum(np.array([error is not None], np.int64), info, "max")[0]
    if error is not None:
        raise error
    if failed:
        raise EvalkitError(f"--ngram: another rank {what}; its error is on that rank's stderr")


def _checked(order: np.ndarray, n: int, label: str) -> np.ndarray:
    """int64 (M,) a strategy's learning order, checked: targets of the split, each once."""
    order = np.ascontiguousarray(order, dtype=np.int64)
    if order.size and (order.min() < 1 or order.max() >= n):
        bad = int(order[(order < 1) | (order >= n)][0])
        raise LedgerViolation(f"{label}: learning_order holds position {bad}, not a target of this split (1..{n - 1})")
    counts = np.bincount(order, minlength=n)
    if (counts > 1).any():
        raise LedgerViolation(f"C4 single pass: {label}'s learning_order holds position {int(np.argmax(counts > 1))} "
                              "twice")
    return order
