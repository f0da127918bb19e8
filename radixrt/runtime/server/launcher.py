"""`radixrt serve`: the frontend in this process, the worker as a child process.

Start-up order: resolve the model, bind the HTTP and ZMQ ports (a taken port fails before the
model loads), start the worker, load the tokenizer while it loads the model, wait for its
WorkerReady, then serve.

SIGINT/SIGTERM drain: new requests get 503, running ones have `--shutdown-grace` seconds to
finish (a second signal cuts that short), then both processes stop. A worker that dies fails
its in-flight requests with 503; with `--restart-worker` a new one (with an empty cache) takes
over once ready, otherwise the command exits non-zero. Everything started is stopped in
reverse order by one exit stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn, TypeVar

import uvicorn

from radixrt.runtime.config import ServerArgs
from radixrt.runtime.http.app import create_app
from radixrt.runtime.server.frontend import Frontend
from radixrt.runtime.server.server_handle import ServerHandle, launch_server
from radixrt.runtime.server.worker import exit_now, setup_logging
from radixrt.runtime.server.worker_supervisor import WorkerProcess
from radixrt.runtime.server.zmq_io import FrontendWorkerLink, WorkerAddresses
from radixrt.runtime.server.zmq_server import ZmqOptions, ZmqServer

__all__ = ["ServerHandle", "add_arguments", "launch_server", "main", "serve"]

logger = logging.getLogger("radixrt.launcher")
T = TypeVar("T")

READY_TIMEOUT_S = 1800.0  # the first start imports the embedded model
WORKER_DEATH_GRACE_S = 5.0  # after the worker died (no restart), answer 503 this long, then exit
DRAIN_POLL_S = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ServerArgs.add_cli_args(parser)


def main(ns: argparse.Namespace) -> NoReturn:
    """`radixrt serve`; ends the process when serving ends."""
    args = ServerArgs.from_cli(ns)
    setup_logging(args.log_level, "frontend")
    try:
        code = asyncio.run(serve(args))
    except (RuntimeError, OSError, ValueError) as e:
        logger.error("radixrt serve failed: %s", e)
        code = 1
    exit_now(code)


async def serve(args: ServerArgs) -> int:
    """Serve until SIGINT/SIGTERM (exit status 0) or the worker's death without restart (1)."""
    from radixrt.runtime.server.tokenizer_manager import TokenizerManager, load_tokenizer
    from radixrt.workers.model_store import resolve_model

    signals = _Signals()
    model_dir = await asyncio.to_thread(resolve_model, args.model)
    if signals.stop.is_set():
        return 0
    args = args.replace(model=str(model_dir))
    async with contextlib.AsyncExitStack() as stack:
        ipc_dir = args.make_ipc_dir()
        if not args.ipc_dir:
            stack.callback(shutil.rmtree, ipc_dir, True)
        http_sock = stack.enter_context(_bind_http(args.host, args.port))
        zmq_server = ZmqServer(args.zmq_address, args.api_keys, ZmqOptions.from_args(args))
        stack.callback(zmq_server.close)
        link = FrontendWorkerLink(WorkerAddresses.in_dir(ipc_dir))
        stack.callback(link.close)
        worker = WorkerProcess(args, ipc_dir)
        stack.push_async_callback(worker.stop)
        await worker.start()
        logger.info("worker %d is loading %s; HTTP will listen on %s:%d", worker.pid, model_dir, args.host, args.port)
        tokenizer = asyncio.ensure_future(asyncio.to_thread(load_tokenizer, model_dir))  # while the worker loads
        ready = await _unless_stopped(signals.stop, link.wait_ready(worker.alive, READY_TIMEOUT_S))
        if ready is None:
            return 0
        tokenizers = TokenizerManager(model_dir, args, ready.context_length, await tokenizer)
        frontend = Frontend(link, tokenizers, worker.pid)
        tasks = [asyncio.ensure_future(frontend.run()), asyncio.ensure_future(zmq_server.run(frontend))]
        stack.callback(lambda: [t.cancel() for t in tasks])
        http = await _start_http(create_app(frontend, args), http_sock, args.log_level)
        stack.push_async_callback(_stop_http, http, frontend)
        print(f"radixrt ready: http://{args.host}:{args.port}  zmq {args.zmq_address}", flush=True)
        return await _supervise(worker, signals, frontend, args)


class _Signals:
    """The first SIGINT/SIGTERM sets `stop` (drain, then exit); a later one sets `again` (exit now)."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.again = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        (self.again if self.stop.is_set() else self.stop).set()


def _bind_http(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(1024)
    return sock


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None if a stop signal comes first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        return None
    return task.result()


async def _supervise(worker: WorkerProcess, signals: _Signals, frontend: Frontend, args: ServerArgs) -> int:
    """Serve until a stop signal (drain, then 0) or a worker death (restart it, or 1)."""
    while True:
        if await _unless_stopped(signals.stop, worker.wait()) is None:
            await _drain(frontend, worker.alive, signals, args.shutdown_grace)
            return 0
        message = f"the worker process died (exit status {worker.returncode})"
        if not args.restart_worker:
            logger.error("%s; answering 503 for %.0fs, then exiting", message, WORKER_DEATH_GRACE_S)
            frontend.fail_all(message)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(signals.stop.wait(), WORKER_DEATH_GRACE_S)
            return 1
        logger.error("%s; starting a new one", message)
        frontend.worker_restarting(message)
        await worker.start()
        if await _unless_stopped(signals.stop, frontend.wait_for_worker(worker.alive, READY_TIMEOUT_S)) is None:
            return 0
        frontend.worker_restarted(worker.pid)
        logger.warning("worker %d is ready (restart %d)", worker.pid, worker.starts - 1)


async def _drain(frontend: Frontend, alive: Callable[[], bool], signals: _Signals, grace: float) -> None:
    """Refuse new requests; give running ones up to `grace` seconds (a second signal ends it)."""
    frontend.refuse("the server is shutting down")
    if frontend.in_flight:
        logger.info("shutting down: waiting up to %.0fs for %d requests", grace, frontend.in_flight)
    deadline = time.monotonic() + grace
    while frontend.in_flight and alive() and not signals.again.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(DRAIN_POLL_S)


class _HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the launcher owns SIGINT/SIGTERM


async def _start_http(app: Any, sock: socket.socket, log_level: str) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    level = "info" if log_level == "debug" else "warning"
    config = uvicorn.Config(app, log_level=level, access_log=False, lifespan="off", timeout_graceful_shutdown=2)
    server = _HttpServer(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the HTTP server did not start")
        await asyncio.sleep(0.02)
    return server, task


async def _stop_http(http: tuple[uvicorn.Server, asyncio.Task[None]], frontend: Frontend) -> None:
    server, task = http
    if frontend.worker_error is None:
        frontend.fail_all("the server is shutting down")  # ends open streams, so connections close
    server.should_exit = True
    await task
