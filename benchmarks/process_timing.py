"""Timing runtimes each in its own worker process, in interleaved rounds driven by the parent.

Why processes: two runtimes' thread pools in one process compete for the cores. Measured on a 2-core machine,
ONNX Runtime's intra-op pool living beside the blocks took the block's second core at two threads (the block
alone scales 1.9x from one thread to two; interleaved with ONNX Runtime in one process it ran at its one-thread
time). Here every runtime gets a ``spawn`` process with its own thread setting, and the parent keeps the
interleaving: it asks one worker at a time to run its callable N times and to report the seconds, while the
others block on their pipe (no CPU).

Protocol: the parent sends tuples ``(op, *args)`` over a :func:`multiprocessing.Pipe`, the worker answers
``("ok", value)`` or ``("error", traceback text)`` and keeps serving. Ops:

- ``("load", factory, spec)``: ``factory(spec)`` (a module-level function, so it pickles by name) returns
  ``(fn, info)``: the zero-argument callable to time and a dict of plain data returned to the parent;
- ``("run", number[, warmup])``: ``warmup`` untimed calls of ``fn`` (default 0), then ``number`` back-to-back
  timed calls; returns ``(wall seconds, process CPU seconds)`` of the timed calls;
- ``("output",)``: one call of ``fn``, its result flattened to a list of numpy arrays (tensors converted);
- ``("close",)``: the worker exits (it also exits when the parent's end of the pipe closes).
"""

import multiprocessing
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .harness import Runner, in_process
from .harness import interleaved as interleaved_rounds

Factory = Callable[[Dict[str, Any]], Tuple[Callable[[], Any], Dict[str, Any]]]


class WorkerError(RuntimeError):
    """A worker raised (the message holds its traceback text) or died."""


def _arrays(result: Any) -> List[np.ndarray]:
    """``result`` (a tensor, an array, or nested tuples/lists of them) as a flat list of numpy arrays."""
    if isinstance(result, (tuple, list)):
        return [a for item in result for a in _arrays(item)]
    if isinstance(result, np.ndarray):
        return [result]
    return [result.detach().cpu().numpy()]  # a torch tensor; torch itself is only imported where one exists


def _run(fn: Callable[[], Any], number: int, warmup: int = 0) -> Tuple[float, float]:
    """Wall and process CPU seconds of ``number`` back-to-back calls, after ``warmup`` untimed ones."""
    return in_process(fn)(number, warmup, 0)


def _serve(conn: Connection, threads: int) -> None:
    """The worker's loop (the target of the spawned process)."""
    # Ctrl-C reaches the whole process group: let the parent decide, then close its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch  # the spawned child re-imports the parent's main module, which imports torch anyway

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work started while importing
        pass
    fn: Optional[Callable[[], Any]] = None
    while True:
        try:
            op, *args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        except Exception:  # a message that does not unpickle here, e.g. a factory whose module fails to import
            conn.send(("error", traceback.format_exc()))
            continue
        if op == "close":
            return
        try:
            if op == "load":
                fn = None  # free the previous row's weights and session before building the next
                fn, reply = args[0](args[1])
            elif op == "run":
                reply = _run(_loaded(fn), *args)
            elif op == "output":
                reply = _arrays(_loaded(fn)())
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception:
            conn.send(("error", traceback.format_exc()))
        else:
            conn.send(("ok", reply))


def _loaded(fn: Optional[Callable[[], Any]]) -> Callable[[], Any]:
    if fn is None:
        raise RuntimeError("nothing loaded: send ('load', factory, spec) first")
    return fn


class Worker:
    """One spawned worker process with ``threads`` intra-op threads; :meth:`call` runs one op."""

    def __init__(self, name: str, threads: int) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pool inherited by fork
        self.name, self.threads = name, threads
        self._conn, child = context.Pipe()
        # daemon: the worker is also terminated if the parent exits without closing it
        self.process = context.Process(target=_serve, args=(child, threads), name=f"{name}-{threads}t", daemon=True)
        self.process.start()
        child.close()  # only the worker holds its end: its exit then reads as EOF here

    def call(self, op: str, *args: Any) -> Any:
        """Send one op and wait for its answer; :class:`WorkerError` with the worker's traceback if it raised."""
        try:
            self._conn.send((op, *args))
            status, value = self._conn.recv()
        except (EOFError, OSError) as error:
            self.process.join(1.0)
            raise WorkerError(f"{self.name} worker ({self.threads} threads) died, exit code "
                              f"{self.process.exitcode}") from error
        if status == "error":
            raise WorkerError(f"{self.name} worker ({self.threads} threads) raised:\n{value}")
        return value

    def close(self, grace: float = 10.0) -> None:
        """Ask the worker to exit; terminate it if it has not within ``grace`` seconds, then kill it if need be."""
        try:
            self._conn.send(("close",))
        except OSError:
            pass
        self.process.join(grace)  # a worker busy in a long "run" (or still importing) reads "close" afterwards
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()


class WorkerPool:
    """Workers by (name, threads), started on first use and kept for later rows (a worker's start, importing
    torch, takes seconds); ``with WorkerPool() as pool:`` closes them all on the way out, exceptions and Ctrl-C
    included."""

    def __init__(self) -> None:
        self.workers: Dict[Tuple[str, int], Worker] = {}

    def get(self, name: str, threads: int) -> Worker:
        if (name, threads) not in self.workers:
            self.workers[name, threads] = Worker(name, threads)
        return self.workers[name, threads]

    def close(self, grace: float = 10.0) -> None:
        while self.workers:
            self.workers.popitem()[1].close(grace)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, exc_type: Optional[type], *exc: object) -> None:
        # On an exception (Ctrl-C included) nothing a worker does is wanted any more: terminate without waiting.
        self.close(10.0 if exc_type is None else 0.0)


def interleaved(workers: Mapping[str, Any], cpu_clock: bool, budget_s: float, min_rounds: int = 3,
                max_rounds: int = 21, min_time: float = 0.05, settle_s: float = 0.05,
                warmup_s: float = 0.05) -> Dict[str, List[float]]:
    """Seconds per call of each worker's loaded callable, one sample per round, rounds interleaved with a rotating
    order (``benchmarks/harness.py``); one worker runs at a time. ``cpu_clock``: the worker's process CPU time
    instead of wall time. ``settle_s``: a pause before each turn, so that a thread pool that spin-waits after its
    work (ONNX Runtime's default) has parked before the next worker is timed. Each turn starts with ``warmup_s``
    of untimed calls (at least one): on a virtual machine a core idle for 10-50 ms runs the next call slowly
    (measured at two threads: LSTM H=128 T=64 B=16 16 -> 25 ms, B=1 1.2 -> 3.8 ms after a 50 ms pause), and after
    0.2-0.5 s idle the 4th-6th calls of a turn ran at twice the time again (LSTM T=64 B=16 H=128, two threads,
    PASSIVE: 4.4 ms calls, then 9.0, 8.9, 8.3, then 4.4; ONNX Runtime's spinning pool does not idle), which would
    weigh on whichever runtime sleeps between calls; the rows compare steady-state calls (cold single requests:
    ``benchmarks/latency.py``). The first call of each worker warms it up (first-call allocation, the block's
    prepared weights), the second sizes its turns."""
    series = interleaved_rounds({key: runner_of(worker) for key, worker in workers.items()},
                                clock="cpu" if cpu_clock else "wall", min_time=min_time, first_calls=2,
                                turn_warmup_s=warmup_s, min_rounds=min_rounds, max_rounds=max_rounds,
                                budget_s=budget_s, settle_s=settle_s)
    return {key: s.samples for key, s in series.items()}


def runner_of(worker: Any) -> Runner:
    """The harness's runner of a worker's loaded callable (its ``run`` op; the round index is not sent)."""
    return lambda number, warmup, index: tuple(worker.call("run", number, warmup))  # type: ignore[return-value]
