"""Related reads are recomputed in a process of their own, beside the archiver's Celery pool.

Recomputing lists is CPU work that grows with the corpus. Run in the pool, after each
message, it held up the next message's events: at 50 publishes/s their ledger rows waited
seconds behind it. Here the consumers only write due-work rows (:mod:`shared.work`), and
this process runs them: woken by the NOTIFY of each transaction that asked, a batch at a
time, and at a lower CPU priority than the API and the consumers, which come first on a
shared machine. The refit check runs here too, so a rebuild never blocks a pool process.

The archiver worker starts it (:class:`Supervisor`, from a worker bootstep), restarts it
if it dies and stops it with the worker; it exits by itself if the worker is killed. Any
number of them may run, one per archiver worker: they claim due rows with
``FOR UPDATE SKIP LOCKED``, and a killed one's rows come due again when their lease ends.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time

import psycopg

from services.archiver.handlers import JOB
from shared import processes, work
from shared.config import Settings
from shared.db import libpq_conninfo
from shared.logs import configure_logging
from shared.runtime import Runtime

log = logging.getLogger(__name__)

NICE = 10  # CPU priority below the API's and the consumers'
WAKE_EVERY_S = 5.0  # with no notification: retries come due, a killed runner's leases end
REFIT_CHECK_EVERY_S = 3600.0
RESTART_MAX_S = 30.0


def run(settings: Settings, parent: int) -> None:
    """The process: until SIGTERM, or until ``parent`` (the worker) is gone."""
    configure_logging(settings.log_level, settings.secrets())
    _take_lower_priority()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Imported here: the worker that starts this process never loads scikit-learn, which
    # took a second and a half of its start-up, while events waited for its consumers.
    from services.archiver.related import RelatedReads

    runtime = Runtime(settings)
    lists = RelatedReads(runtime.db, settings)

    def recompute(jobs: list[work.Claimed]) -> None:
        lists.recompute_many([job.key for job in jobs])

    def running() -> bool:
        return not stop.is_set() and os.getppid() == parent

    refit_checked = float("-inf")
    backoff = 0.5
    while running():
        try:
            with psycopg.connect(
                libpq_conninfo(settings.db_url), autocommit=True, connect_timeout=3
            ) as conn:
                conn.execute(f"LISTEN {work.CHANNEL}")
                log.info("related reads listening for due work")
                backoff = 0.5
                while running():
                    work.run_due_batches(runtime.db, JOB, recompute)
                    if time.monotonic() - refit_checked >= REFIT_CHECK_EVERY_S:
                        refit_checked = time.monotonic()
                        if lists.needs_refit():
                            log.info("related reads: refitting the text model")
                            lists.rebuild()
                    # Spent at once: the generator is never left suspended (see the relay).
                    sum(1 for _ in conn.notifies(timeout=WAKE_EVERY_S, stop_after=1))
        except (psycopg.Error, OSError) as exc:
            log.warning("related reads lost the database, retrying in %.1fs: %s", backoff, exc)
            stop.wait(backoff)
            backoff = min(RESTART_MAX_S, backoff * 2)
    runtime.close()


def _take_lower_priority() -> None:
    """The lowest priority the machine offers: lists may wait, a consumer's events may not.

    NICE below the worker everywhere. On Linux also the idle scheduling class (a waking
    consumer or request preempts it at once) and a session of its own ranked at that nice
    value: with the kernel's autogroups a session competes as a whole, so in the worker's
    session this always-busy process kept that session (nice 5) asking for CPU against the
    publisher and the servers. Out of the worker's process group, the stack's kill of the
    worker no longer reaches it: the kernel kills it when the worker dies (nothing is lost:
    its transactions roll back, its leases run out)."""
    niceness = os.nice(NICE)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if not processes.AUTOGROUP.exists():
        return
    processes.end_with_parent(signal.SIGKILL)
    try:
        os.setsid()
    except OSError:
        return
    processes.rank_session(niceness)


class Supervisor:
    """Keeps one :func:`run` process going for the life of the worker that owns it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._thread = threading.Thread(target=self._keep_running, name="related", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._thread.start()

    def _keep_running(self) -> None:
        # Spawned, not forked: a fresh interpreter, none of the worker's threads or sockets.
        context = multiprocessing.get_context("spawn")
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            process = context.Process(
                target=run, args=(self.settings, os.getpid()), name="pressroom-related"
            )
            process.start()
            self._process = process
            if self._stop.is_set():  # stopped while it started
                process.terminate()
            process.join()
            if self._stop.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            log.warning(
                "the related-reads process exited with %s; restarting in %.0f s",
                process.exitcode,
                backoff,
            )
            self._stop.wait(backoff)
            backoff = min(RESTART_MAX_S, backoff * 2)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
        self._thread.join(timeout)
