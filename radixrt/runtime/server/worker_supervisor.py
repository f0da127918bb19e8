"""The worker as a child process of `radixrt serve`: start it, watch it, stop it (and start it
again after a death when `--restart-worker` is on; the launcher decides)."""

from __future__ import annotations

import asyncio
import logging
import signal

from radixrt.runtime.config import ServerArgs
from radixrt.runtime.server.worker import worker_argv, worker_env

logger = logging.getLogger("radixrt.launcher")

STOP_TIMEOUT_S = 10.0
SAVE_STOP_TIMEOUT_S = 600.0  # with --cache-dir the worker saves the cache before it exits


class WorkerProcess:
    """One worker at a time for `args`, connecting to the ipc:// pipes in `ipc_dir`."""

    def __init__(self, args: ServerArgs, ipc_dir: str):
        self.args = args
        self.ipc_dir = ipc_dir
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start a worker (the previous one must have exited). Its own session: a terminal's
        Ctrl-C reaches the launcher only, which stops the worker after draining."""
        assert not self.alive(), "a worker is already running"
        argv = worker_argv(self.args, self.ipc_dir)
        self.process = await asyncio.create_subprocess_exec(*argv, start_new_session=True, env=worker_env())
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM (the loop stops between steps, saving the cache with --cache-dir), then SIGKILL
        after STOP_TIMEOUT_S (SAVE_STOP_TIMEOUT_S with --cache-dir)."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        timeout = SAVE_STOP_TIMEOUT_S if self.args.cache_dir else STOP_TIMEOUT_S
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            logger.warning("the worker did not stop within %.0fs; killing it", timeout)
            self.process.kill()
            await self.process.wait()
