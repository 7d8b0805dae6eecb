"""Listening, TLS, worker processes, signals and graceful shutdown.

With several workers the master forks them; each binds its own socket with SO_REUSEPORT,
so the kernel spreads connections over both cores. The master only forwards signals and
restarts a worker that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from pypi_mirror.cache.votes import VoteRecorder
from pypi_mirror.config import Config
from pypi_mirror.db import STORE_ERRORS, Database, is_unreachable
from pypi_mirror.index.root_fresh import refresh_root_index
from pypi_mirror.repo import Repo
from pypi_mirror.server.accesslog import FLUSH_INTERVAL, AccessLogWriter
from pypi_mirror.server.localfile import small_files
from pypi_mirror.server.metrics import forget_worker, prepare_metrics_dir
from pypi_mirror.server.monitor import Monitor
from pypi_mirror.server.ondemand import OnDemandIndex
from pypi_mirror.server.protocol import ServerContext
from pypi_mirror.server.root_refresh import RootRefresher
from pypi_mirror.server.router import AccessLog, Router
from pypi_mirror.server.simple import SimpleIndex
from pypi_mirror.server.state import ServerState
from pypi_mirror.server.tally import RequestTally
from pypi_mirror.upstream import UpstreamUrls

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 30.0
# Ctrl-C reaches the master and every worker at once, and the master passes it on too (so
# does systemd without KillMode=mixed): a repeat within this many seconds is that echo, not
# an operator asking a second time.
SIGNAL_ECHO = 0.5
STOP_SLACK = 1.5  # seconds after the grace for the rest of the stop
VOTES_SLACK = 1.0  # of which storing the queued votes may take this much
MAX_FAST_FAILURES = 3


class StartupError(Exception):
    pass


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(config.tls.cert), str(config.tls.key))
    except (OSError, ssl.SSLError) as error:
        raise StartupError(
            f"tls: cannot load cert {config.tls.cert} / key {config.tls.key}: {error}"
        ) from None
    return context


def _check_port_free(host: str | None, port: int) -> None:
    """Bind once without SO_REUSEPORT: fails if anything (even another mirror) holds the port."""
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host or "0.0.0.0", port))
    except OSError as error:
        raise StartupError(f"listen: cannot bind {host or '*'}:{port}: {error.strerror}") from None
    finally:
        probe.close()


async def serve_worker(config: Config, ssl_context: ssl.SSLContext | None, reuse_port: bool) -> int:
    loop = asyncio.get_running_loop()
    repo = Repo(config)
    urls = UpstreamUrls(config)
    votes = VoteRecorder(
        config.store, config.cache.dedup_window, capacity=config.database.vote_buffer
    )
    votes.start()
    access_log = AccessLogWriter(config.log.path) if config.log.path else None
    tally = RequestTally()
    state = ServerState(config, repo, urls, votes, access_log, tally=tally)
    ondemand = OnDemandIndex(config, repo, urls, state.session)
    simple = SimpleIndex(state, ondemand)
    monitor = Monitor(state, tally, ondemand)
    root_refresher = RootRefresher(repo, config.store, config.upstream.root_refresh)
    context = ServerContext(
        Router(state, simple, monitor.routes(config.prefix)),
        AccessLog(state, tally),
        read_timeout=config.timeouts.read,
        idle_timeout=config.timeouts.idle,
        write_timeout=config.timeouts.write,
    )
    host, port = config.listen_host_port
    listener = await loop.create_server(
        context,
        host,
        port,
        reuse_port=reuse_port,
        backlog=1024,
        ssl=ssl_context,
        ssl_handshake_timeout=config.timeouts.read if ssl_context else None,
    )

    stop = asyncio.Event()

    first_signal: float | None = None

    def on_signal() -> None:
        nonlocal first_signal
        stop.set()
        now = time.monotonic()
        if first_signal is None:
            first_signal = now
        elif now - first_signal >= SIGNAL_ECHO:  # a second signal: stop waiting for anyone
            log.info("worker %d: second signal, closing every connection now", os.getpid())
            context.abort_all()

    loop.add_signal_handler(signal.SIGTERM, on_signal)
    loop.add_signal_handler(signal.SIGINT, on_signal)
    if access_log is not None:
        loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if access_log is not None:
                access_log.flush()
            monitor.tick()
            small_files.sweep_if_due()

    flusher = asyncio.create_task(flush_periodically())
    root_refresher.start()
    await stop.wait()
    log.info(
        "worker %d stopping: finishing in-flight requests (up to %.0f s)",
        os.getpid(),
        SHUTDOWN_GRACE,
    )
    # Everything below fits in SHUTDOWN_GRACE + STOP_SLACK, whatever clients or the database
    # do: connections get the grace, storing the queued votes what is left of the slack.
    deadline = time.monotonic() + SHUTDOWN_GRACE + STOP_SLACK
    listener.close()
    context.close_idle()
    await context.wait_closed(SHUTDOWN_GRACE)
    flusher.cancel()
    root_refresher.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.1, deadline - time.monotonic() - VOTES_SLACK)):
            await monitor.close()
            await state.close_session()
    ondemand.close()
    await loop.run_in_executor(None, votes.close, max(0.5, deadline - time.monotonic()))
    if access_log is not None:
        access_log.close()
    if votes.dropped:
        log.warning("worker %d dropped %d votes (queue full)", os.getpid(), votes.dropped)
    log.info("worker %d stopped: %d votes stored", os.getpid(), votes.stored)
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (libuv: the loop, transports and timers in C, about a third less
    CPU per small request than asyncio's selector loop, measured with benchmarks/serve);
    ``PYPI_MIRROR_LOOP=asyncio`` chooses the standard loop."""
    if os.environ.get("PYPI_MIRROR_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3


def tune_malloc() -> None:
    """Keep body-sized buffers (a proxied piece, a read) on the heap, and freed heap pages
    mapped: with glibc's defaults each ~100 KB buffer was a fresh mmap, page-faulted in and
    unmapped again (a tenth of a proxied request's CPU, seen with perf). Costs a few MB of
    resident memory per worker; a no-op off glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024)
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024)


def _run(main: Coroutine[Any, Any, int]) -> int:
    tune_malloc()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main)


def _worker_process(config: Config, ssl_context: ssl.SSLContext | None) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        return _run(serve_worker(config, ssl_context, reuse_port=True))
    except Exception:
        log.exception("worker %d crashed", os.getpid())
        return 1


def _supervise(config: Config, ssl_context: ssl.SSLContext | None, count: int) -> int:
    children: dict[int, float] = {}
    stopping = False
    fast_failures = 0

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker_process(config, ssl_context)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = time.monotonic()

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if sig == signal.SIGINT else sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    for _ in range(count):
        spawn()
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        started = children.pop(pid, time.monotonic())
        forget_worker(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        log.error("worker %d exited with %d; starting a new one", pid, code)
        fast_failures = fast_failures + 1 if time.monotonic() - started < 2 else 0
        if fast_failures >= MAX_FAST_FAILURES:
            log.error("workers keep failing at start; stopping")
            stopping, exit_code = True, 1
            forward(signal.SIGTERM, None)
            continue
        spawn()
    log.info("stopped")
    return exit_code


def _prepare_store(config: Config, repo: Repo) -> None:
    """Create or migrate the schema once, up front, and list what the store knows in the
    root index (a mirror that never ran `sync` still answers /simple/, including projects
    fetched on demand before a restart).

    A shared PostgreSQL that cannot be reached does not stop a node: it serves its files and
    pages, buffers votes, and says why in /ready until the database is back."""
    try:
        db = Database.open(config.store, "serve")
    except STORE_ERRORS as error:
        if not config.store.is_postgresql or not is_unreachable(error):
            raise StartupError(
                f"cannot open the database ({config.store.display}): {error}"
            ) from None
        log.error("database unreachable at start (%s): %s", config.store.display, error)
        return
    try:
        refresh_root_index(repo, db)
    finally:
        db.close()


def run_server(config: Config) -> int:
    try:
        repo = Repo(config)
        repo.create_folders()
        # Before any worker starts: each one's values land in this folder, summed at scrape.
        prepare_metrics_dir(repo.metrics_dir)
        _prepare_store(config, repo)
        ssl_context = _ssl_context(config)
        host, port = config.listen_host_port
        _check_port_free(host, port)
    except (StartupError, OSError) as error:
        print(f"pypi-mirror: {error}", file=sys.stderr)
        return 2
    count = config.worker_count
    scheme = "https" if ssl_context else "http"
    log.info(
        "serving %s://%s:%d%s/simple/ from %s (%d worker%s), upstream %s",
        scheme,
        host or "0.0.0.0",
        port,
        config.prefix,
        config.repo_path,
        count,
        "" if count == 1 else "s",
        config.upstream.pypi_url,
    )
    if count == 1:
        return _run(serve_worker(config, ssl_context, reuse_port=False))
    return _supervise(config, ssl_context, count)
