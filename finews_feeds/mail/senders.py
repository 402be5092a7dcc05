"""The connections a digest run sends on: threads of this process, or sender processes with threads of their own.

A run (:mod:`.delivery`) commits each message `sending`, hands its :class:`Job` to its senders with
:meth:`put`, and reads the :class:`Outcome` of each back with :meth:`collect`; what an attempt does
(build the message, wait for the rate limit, send it) is the run's ``attempt`` function. Both kinds
of senders keep one thread per SMTP connection, each taking the next queued job.

Why processes: building a message (personalise, MIME, DKIM) and speaking SMTP cost about 0.8 ms of
interpreter time a message, the ledger's side another 0.5 ms, and one interpreter lock runs one of
them at a time: one process topped out at 750 messages/s on SQLite and 620 on PostgreSQL (this
2-core machine, the loopback sink of ``benchmarks/send.py``, 20,000 subscribers), with the lock busy
and a core idle. With the messages built and sent in sender processes the ledger process only
claims, commits and dispatches (figures in docs/benchmarks.md). A sender process gets each
variant once and then, per message, the claimed row and its Message-ID; it sends back what
happened. The rate limit is one slot in shared memory, taken by every connection of every process.

What a sender process does not change: a job is committed `sending` before it is queued and its
outcome is committed by the run, so the duplicate window is the same (the jobs in flight). A
sender process that dies takes its jobs in flight with it: whether the server took them is
unknown, so they stay `sending` (the next run sends them again, same Message-ID) and the run
stops with an error. Sender processes ignore SIGINT and SIGTERM: the run tells them when to stop,
after the messages in flight, and a sender process whose run is gone (its pipe closed) stops too.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from ..errors import DeliveryError, ErrorRecord
from .digest import Variant
from .mailer import SmtpTransport
from .store import Claim

#: Sends of fewer messages than this stay in the run's own process (``smtp.processes = 0``):
#: a sender process takes 0.7 s to start (it imports the renderer and the
#: transport), which a send of a few seconds does not win back.
PROCESSES_FROM_MESSAGES = 2000


@dataclass
class Job:
    """One subscriber's message on its way: committed `sending`, queued for or on a connection."""

    claim: Claim
    variant: Variant
    msg_id: str
    #: Attempts made so far in this run (0 before the first).
    attempt: int = 0
    #: The message, built on its first attempt and reused by its retries (in the same process).
    msg: EmailMessage | None = None
    #: The last temporary failure, while the job waits for its retry.
    error: str = ""


@dataclass
class Outcome:
    job: Job
    #: sent, temporary, permanent, unbuildable (the message cannot be built), fatal (the run cannot go
    #: on) or lost (its sender process died: whether the server took it is unknown)
    kind: str
    error: str = ""
    code: int | None = None
    connection: bool = False
    exc: BaseException | None = None


#: Builds and sends one job's message on a connection: the run's attempt.
Attempt = Callable[[SmtpTransport, Job], Outcome]


class RateLimiter:
    """At most ``rate`` messages a second, on an injectable clock (seconds) and sleep.

    Shared by every connection of a run, so ``smtp.rate_per_second`` is the run's rate, not each
    connection's: each caller takes the next free slot under a lock and sleeps outside it. With
    ``shared`` (a ``multiprocessing`` double, 0 before the first slot) the slot lives in shared
    memory, under its lock, for the connections of every sender process; the clock must then be
    the same in all of them (``time.time``).
    """

    def __init__(self, rate: float, clock: Callable[[], float], sleep: Callable[[float], None],
                 shared: Any = None) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock = clock
        self.sleep = sleep
        self.next_at: float | None = None
        self.shared = shared
        self._lock = threading.Lock() if shared is None else shared.get_lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            next_at = self.next_at if self.shared is None else (self.shared.value or None)
            at = now if next_at is None or next_at <= now else next_at
            if self.shared is None:
                self.next_at = at + self.interval
            else:
                self.shared.value = at + self.interval
        if at > now:
            self.sleep(at - now)


class Senders(Protocol):
    def put(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` for the connections."""

    def collect(self, wait: float) -> list[Outcome]:
        """The outcomes that came back: the first waited for up to ``wait`` seconds, then all that are there."""

    def close(self) -> None:
        """Let the messages in flight finish, drop what is queued but not begun, close the connections."""


class ThreadSenders:
    """One thread per connection in this process, all taking jobs from one queue."""

    def __init__(self, transports: Sequence[SmtpTransport], attempt: Attempt) -> None:
        self.attempt = attempt
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._connection, args=(transport,), name=f"smtp-{n}", daemon=True)
                        for n, transport in enumerate(transports)]
        for thread in self.threads:
            thread.start()

    def put(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.jobs.put(job)

    def collect(self, wait: float) -> list[Outcome]:
        return _drain(self.outcomes, wait)

    def close(self) -> None:
        # Messages queued but not begun stay `sending` in the ledger: the next run sends them.
        while True:
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()

    def _connection(self, transport: SmtpTransport) -> None:
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    return
                try:
                    outcome = self.attempt(transport, job)
                except BaseException as exc:  # a bug: the run records the row and raises it
                    outcome = Outcome(job, "fatal", f"{type(exc).__name__}: {exc}", exc=exc)
                self.outcomes.put(outcome)
        finally:
            transport.close()


def _drain(outcomes: queue.SimpleQueue[Outcome], wait: float) -> list[Outcome]:
    """What is on ``outcomes``: the first waited for up to ``wait`` seconds, then all that are there."""
    out: list[Outcome] = []
    try:
        out.append(outcomes.get(timeout=wait) if wait > 0 else outcomes.get_nowait())
    except queue.Empty:
        return out
    while True:
        try:
            out.append(outcomes.get_nowait())
        except queue.Empty:
            return out


class SenderSetup(Protocol):
    """What a sender process needs, pickled to it when it starts: its attempt and its connections."""

    def attempt(self, limiter: RateLimiter) -> Attempt: ...

    def transport(self) -> SmtpTransport: ...


#: A job as it goes to a sender process: its variant by key, sent to that process once.
_WireJob = tuple[Claim, str, str, int]
#: An outcome as it comes back: subscriber id, attempts, kind, error, code, connection, the error to raise.
_WireOutcome = tuple[int, int, str, str, int | None, bool, ErrorRecord | None]


class ProcessSenders:
    """``processes`` sender processes (started with ``spawn``: nothing of this process's threads or
    connections is inherited), ``connections`` shared out between them; each job goes to the one with
    the fewest in flight (a retry too: it builds the message again, with the same Message-ID)."""

    def __init__(self, setup: SenderSetup, processes: int, connections: int, rate: float) -> None:
        context = multiprocessing.get_context("spawn")
        # (kept on self: the shared memory goes when the last reference in this process does)
        self._slot = context.Value("d", 0.0)
        #: Set when a sender process ended before its time: the run ends, its jobs from now on are lost.
        self._failure: DeliveryError | None = None
        self._stopping = False
        self.outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._inflight: list[dict[int, Job]] = []
        self._variants: list[set[str]] = []  # the variant keys each process has
        self._keys: dict[int, str] = {}  # id(variant) -> its key in the sender processes
        self._jobs: list[Connection] = []
        self._results: list[Connection] = []
        self.procs: list[Any] = []
        for n in range(processes):
            share = connections // processes + (1 if n < connections % processes else 0)
            jobs_out, jobs_in = context.Pipe(duplex=False)
            results_out, results_in = context.Pipe(duplex=False)
            proc = context.Process(target=_sender_process, args=(setup, share, rate, self._slot, jobs_out, results_in),
                                   name=f"finews-sender-{n + 1}", daemon=True)
            proc.start()
            jobs_out.close()
            results_in.close()
            self.procs.append(proc)
            self._jobs.append(jobs_in)
            self._results.append(results_out)
            self._inflight.append({})
            self._variants.append(set())
        self._reader = threading.Thread(target=self._read, name="senders", daemon=True)
        self._reader.start()

    def put(self, jobs: Sequence[Job]) -> None:
        batches: list[list[_WireJob]] = [[] for _ in self.procs]
        with self._lock:
            if self._failure is not None:
                for job in jobs:
                    self.outcomes.put(Outcome(job, "lost", self._failure.message, exc=self._failure))
                return
            loads = [len(inflight) for inflight in self._inflight]
            for job in jobs:
                n = loads.index(min(loads))
                loads[n] += 1
                self._inflight[n][job.claim.subscriber.id] = job
                key = self._keys.setdefault(id(job.variant), str(len(self._keys)))
                if key not in self._variants[n]:
                    self._variants[n].add(key)
                    self._send(n, ("variant", key, job.variant))
                batches[n].append((job.claim, job.msg_id, key, job.attempt))
        for n, batch in enumerate(batches):
            if batch:
                self._send(n, ("jobs", batch))

    def _send(self, n: int, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the process is gone: the reader reports its jobs lost
            self._jobs[n].send(message)

    def collect(self, wait: float) -> list[Outcome]:
        return _drain(self.outcomes, wait)

    def close(self) -> None:
        with self._lock:
            self._stopping = True
        for n in range(len(self.procs)):
            self._send(n, ("stop",))
        for proc in self.procs:
            proc.join()
        self._reader.join()
        for conn in (*self._jobs, *self._results):
            conn.close()

    def _read(self) -> None:
        """Outcomes from the sender processes onto ``outcomes``; a process that ends with jobs in flight loses them."""
        live = {**{conn: n for n, conn in enumerate(self._results)},
                **{proc.sentinel: n for n, proc in enumerate(self.procs)}}
        while live:
            for ready in wait(list(live)):
                n = live[ready]
                if isinstance(ready, Connection):
                    try:
                        outcomes: list[_WireOutcome] = ready.recv()
                    except (EOFError, OSError):
                        del live[ready]
                        continue
                    self._returned(n, outcomes)
                else:
                    # Ended: what it sent back before it ended is read first, the rest was lost with it.
                    del live[ready]
                    results = self._results[n]
                    live.pop(results, None)
                    with contextlib.suppress(EOFError, OSError):
                        while results.poll():
                            self._returned(n, results.recv())
                    self._lost(n)

    def _returned(self, n: int, outcomes: list[_WireOutcome]) -> None:
        for sub, attempt, kind, error, code, connection, failure in outcomes:
            with self._lock:
                job = self._inflight[n].pop(sub)
            job.attempt = attempt
            self.outcomes.put(Outcome(job, kind, error, code, connection, failure.restore() if failure else None))

    def _lost(self, n: int) -> None:
        proc = self.procs[n]
        proc.join()
        with self._lock:
            jobs, self._inflight[n] = list(self._inflight[n].values()), {}
            if self._stopping:
                return
            error = DeliveryError(
                f"{proc.name} ended (exit code {proc.exitcode}) with {len(jobs)} messages in flight",
                hint="those stay `sending` and go out again, with the same Message-ID, when the send is run again")
            self._failure = self._failure or error
        for job in jobs:
            self.outcomes.put(Outcome(job, "lost", error.message, exc=error))


def _sender_process(setup: SenderSetup, connections: int, rate: float, slot: Any, jobs: Connection,
                    results: Connection) -> None:
    """A sender process: its connections send the jobs it is given; outcomes go back in groups."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    senders = ThreadSenders([setup.transport() for _ in range(connections)],
                            setup.attempt(RateLimiter(rate, time.time, time.sleep, shared=slot)))
    finished = threading.Event()

    def forward() -> None:
        while not (finished.is_set() and senders.outcomes.empty()):
            got = senders.collect(0.05)  # all that came back meanwhile: one write for them
            if got:
                try:
                    results.send([_wire(outcome) for outcome in got])
                except OSError:
                    return  # the run is gone; its ledger keeps these `sending`

    forwarder = threading.Thread(target=forward, name="outcomes", daemon=True)
    forwarder.start()
    variants: dict[str, Variant] = {}
    try:
        while True:
            try:
                message = jobs.recv()
            except (EOFError, OSError):
                break  # the run is gone: finish what is in flight, then end
            if message[0] == "variant":
                variants[message[1]] = message[2]
            elif message[0] == "jobs":
                senders.put([Job(claim, variants[key], msg_id, attempt) for claim, msg_id, key, attempt in message[1]])
            else:
                break
    finally:
        senders.close()
        finished.set()
        forwarder.join()
        results.close()


def _wire(outcome: Outcome) -> _WireOutcome:
    exc = outcome.exc
    return (outcome.job.claim.subscriber.id, outcome.job.attempt, outcome.kind, outcome.error, outcome.code,
            outcome.connection, ErrorRecord.of(exc) if exc is not None else None)
