"""Start `radixrt serve` as a subprocess and wait until it answers (used by Runtime and tests)."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from radixrt import envs
from radixrt.runtime.config import ServerArgs

STOP_TIMEOUT_S = 20.0  # beyond --shutdown-grace


class ServerHandle:
    """A running `radixrt serve` process: `.url`, `.zmq_address`, `.shutdown()`; a context manager."""

    def __init__(self, process: subprocess.Popen[bytes], args: ServerArgs):
        self.process = process
        self.args = args
        host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
        self.url = f"http://[{host}]:{args.port}" if ":" in host else f"http://{host}:{args.port}"
        self.zmq_address = args.zmq_address.replace("0.0.0.0", "127.0.0.1")

    def wait_ready(self, timeout: float) -> None:
        """Poll /health until it answers 200; raise if the process exits or `timeout` passes."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"radixrt serve exited with status {self.process.returncode} while starting")
            try:
                with opener.open(self.url + "/health", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.shutdown()
        raise TimeoutError(f"radixrt serve was not ready within {timeout:.0f}s")

    def shutdown(self, timeout: float | None = None) -> int:
        """SIGTERM, then SIGKILL after `timeout` (default: the shutdown grace + 20s); the exit status."""
        timeout = self.args.shutdown_grace + STOP_TIMEOUT_S if timeout is None else timeout
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def launch_server(args: ServerArgs, timeout: float = 900.0, **popen_kwargs: Any) -> ServerHandle:
    """Start `radixrt serve` for `args` (port 0: a free port pair) and wait until it is healthy.

    The API key goes to the child in $RADIXRT_API_KEY, never on its command line (`ps` shows that).
    """
    if args.port == 0:
        args = args.replace(port=free_port_pair(args.host), zmq_port=0)
    env = dict(popen_kwargs.pop("env", None) or os.environ)
    env.pop(envs.API_KEY, None)
    if args.api_keys:
        env[envs.API_KEY] = "\n".join(args.api_keys)
    cmd = [sys.executable, "-m", "radixrt", "serve", *server_argv(args.without_api_keys())]
    handle = ServerHandle(subprocess.Popen(cmd, env=env, **popen_kwargs), args)
    try:
        handle.wait_ready(timeout)
    except BaseException:
        handle.shutdown()
        raise
    return handle


def server_argv(args: ServerArgs) -> list[str]:
    """The `radixrt serve` flags that reproduce `args` (defaults left out)."""
    argv: list[str] = []
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        argv += [flag] if isinstance(value, bool) else [flag, str(value)]
    return argv


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port p such that p and p + 1 are both free now (HTTP and ZMQ)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind((host, 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free pair of ports")
