"""Issue #11's rows: the batching logger's caller cost and stored rate, and the worker
overhead of each framework integration.

* caller cost: ``EventLogger(batch=True).log_event`` on SQLite (TaskEvent built in the loop)
  vs one structlog JSON line (bound logger, ISO timestamp, JSON renderer) written to a file.
* batching durability: 4 producer processes, each with its own ``batch=True`` logger, into
  one SQLite file; events/s actually stored (the clock stops when every process has
  flushed and closed) vs 4 processes writing the same rows with sqlite3 executemany.
* worker overhead: no-op tasks (each INCRs a Redis counter) through a real worker of each
  framework, with the integration (batching logger to SQLite) vs without, same run; tasks/s
  from the first enqueue to the last task done. Needs Redis at 127.0.0.1:6379 (db 15).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from _harness import Bench

from omniq_observe.backend import SQLiteBackend
from omniq_observe.events import EventLogger
from omniq_observe.models.event import TaskEvent

HERE = Path(__file__).resolve().parent
_TMP = Path(tempfile.mkdtemp(prefix="omniq-bench-integ-"))
atexit.register(shutil.rmtree, _TMP, True)
PRODUCERS = 4
REPEATS = 3  # per worker row


def _db() -> Path:
    return Path(tempfile.mkstemp(suffix=".db", dir=_TMP)[1])


# -- caller cost ---------------------------------------------------------------------------
def batch_caller_run(n: int) -> float:
    with EventLogger(SQLiteBackend(_db()), batch=True, flush_interval=0.1) as logger:
        start = time.perf_counter()
        for i in range(n):
            logger.log_event(TaskEvent(task_id=f"t{i}", event_type="STARTED"))
        elapsed = time.perf_counter() - start
        logger.flush()
    return elapsed


def structlog_line_baseline(n: int) -> float:
    with (_TMP / "lines.log").open("w") as out:
        log = structlog.wrap_logger(
            structlog.WriteLogger(out),
            processors=[structlog.processors.TimeStamper(fmt="iso"),
                        structlog.processors.JSONRenderer()],
        )
        start = time.perf_counter()
        for i in range(n):
            log.info("task event", task_id=f"t{i}", event_type="STARTED")
        return time.perf_counter() - start


# -- batching durability -------------------------------------------------------------------
def _produce_batched(path: str, n: int, go: object) -> None:
    logger = EventLogger(SQLiteBackend(path), batch=True)
    go.wait()  # type: ignore[attr-defined]
    for i in range(n):
        logger.log_event(TaskEvent(task_id=f"p{os.getpid()}-{i}", event_type="STARTED"))
    logger.close()


def _produce_raw(path: str, n: int, go: object) -> None:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (task_id TEXT, event_type TEXT, body TEXT)")
    go.wait()  # type: ignore[attr-defined]
    rows = []
    for i in range(n):
        event = TaskEvent(task_id=f"p{os.getpid()}-{i}", event_type="STARTED")
        rows.append((event.task_id, event.event_type, event.event_id))
        if len(rows) == 1000:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
            rows = []
    if rows:
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
    conn.close()


def _processes(target: Callable[[str, int, object], None], prepare: bool) -> Callable[[int], float]:
    def run(n: int) -> float:
        path = str(_db())
        if prepare:  # create the schema before the clock starts
            EventLogger(SQLiteBackend(path)).close()
            SQLiteBackend(path).append_blocking([TaskEvent(task_id="x", event_type="STARTED")])
        ctx = multiprocessing.get_context("fork")
        go = ctx.Event()
        procs = [ctx.Process(target=target, args=(path, n // PRODUCERS, go))
                 for _ in range(PRODUCERS)]
        for proc in procs:
            proc.start()
        time.sleep(0.5)  # let every process open its database before the clock starts
        start = time.perf_counter()
        go.set()
        for proc in procs:
            proc.join()
        return time.perf_counter() - start

    return run


# -- worker overhead -----------------------------------------------------------------------
def _worker_cmd(framework: str, queue: str) -> list[str]:
    bin_dir = Path(sys.executable).parent
    return {
        "celery": [sys.executable, "-m", "celery", "-A", "wb_celery", "worker", "-Q", queue,
                   "--pool", "prefork", "-c", "1", "--without-heartbeat", "--without-gossip",
                   "--without-mingle", "-l", "error"],
        "rq": [str(bin_dir / "rq"), "worker", "-u", "redis://127.0.0.1:6379/15",
               "--worker-class", "wb_rq.BenchWorker", "-q", queue],
        "dramatiq": [sys.executable, "-m", "dramatiq", "wb_dramatiq", "--processes", "1",
                     "--threads", "4", "--queues", queue],
        "arq": [str(bin_dir / "arq"), "wb_arq.WorkerSettings"],
        "taskiq": [str(bin_dir / "taskiq"), "worker", "wb_taskiq:broker", "--workers", "1",
                   "--no-configure-logging"],
    }[framework]


class WorkerRig:
    """One running worker and its producer: started on first use, stopped after the
    row's last run (``calls``: the warm-up and the repeats) or at exit."""

    def __init__(self, framework: str, observe: bool, calls: int = 1 + REPEATS) -> None:
        self.framework = framework
        self.calls = calls
        queue = f"omniq-bench-{framework}-{'obs' if observe else 'raw'}-{os.urandom(3).hex()}"
        self.env = dict(os.environ, OMNIQ_BENCH_QUEUE=queue,
                        OMNIQ_BENCH_OBSERVE="1" if observe else "",
                        OMNIQ_BENCH_STORAGE=f"sqlite:///{_db()}",
                        PYTHONPATH=os.pathsep.join([str(HERE / "workers"), str(HERE.parent)]))
        self.cmd = _worker_cmd(framework, queue)
        self.proc: subprocess.Popen[bytes] | None = None

    def __call__(self, n: int) -> float:
        if self.proc is None:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)
            atexit.register(self.stop)
        try:
            done = subprocess.run(
                [sys.executable, str(HERE / "workers" / f"wb_{self.framework}.py"), str(n)],
                env=self.env, capture_output=True, check=True,
            )
        finally:
            self.calls -= 1
            if self.calls <= 0:
                self.stop()
        return float(done.stdout.decode().split()[0])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


WORKER_TASKS = {"celery": 500, "rq": 100, "dramatiq": 500, "arq": 500, "taskiq": 500}


def benchmarks() -> list[Bench]:
    """The rows of issue #11."""
    rows = [
        Bench("integrations: caller cost batch log_event vs structlog line", 50_000,
              batch_caller_run, structlog_line_baseline, "structlog JSON line to a file",
              target_ratio=1.0),
        Bench("integrations: 4 batch=True producers -> 1 SQLite file, stored", 400_000,
              _processes(_produce_batched, True), _processes(_produce_raw, False),
              "4 processes sqlite3 executemany", target_rate=100_000, repeats=3),
    ]
    for framework, tasks in WORKER_TASKS.items():
        rows.append(Bench(
            f"integrations: {framework} worker no-op tasks, instrumented", tasks,
            WorkerRig(framework, True), WorkerRig(framework, False),
            f"{framework} worker without the integration", target_ratio=0.9, repeats=REPEATS,
        ))
    return rows
