"""Parent side of a compile child process (compile_worker.py): send a regex, wait at most the time limit.

A compile that overruns is stopped by killing the child; the next compile starts a fresh one.
Only plain bytes cross the pipe (no pickle).
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_WORKER = Path(__file__).with_name("compile_worker.py")


class CompileError(Exception):
    """outlines-core could not compile the regex, or the grammar is over the size budget."""


class CompileTimeout(Exception):
    """The compile ran past its time limit and was stopped."""


class CompileProcess:
    """One child process; not thread-safe (the compiler gives each thread its own)."""

    def __init__(self, vocabulary_bytes: bytes, *, max_states: int, memory_limit_bytes: int):
        self._vocabulary_bytes = vocabulary_bytes
        self._argv = [sys.executable, str(_WORKER), str(max_states), str(memory_limit_bytes)]
        self._proc: subprocess.Popen | None = None

    def compile(self, request: dict[str, Any], time_limit_s: float) -> tuple[str, bytes, int]:
        """(regex, serialised Index, number of states) of a compile request (see compile_worker).

        Raises CompileError or CompileTimeout.
        """
        proc = self._started()
        deadline = time.monotonic() + time_limit_s
        try:
            _write_frame(proc, json.dumps(request).encode())
            reply = self._read_frame(proc, deadline)
        except (BrokenPipeError, EOFError):
            self.close()
            raise CompileError("the compile process died (the grammar likely needs too much memory)") from None
        except TimeoutError:
            self.close()
            raise CompileTimeout(f"compiling the grammar took longer than {time_limit_s:g}s") from None
        if reply[:1] == b"E":
            raise CompileError(reply[1:].decode(errors="replace"))
        num_states, regex_len = struct.unpack_from(">II", reply, 1)
        return reply[9 : 9 + regex_len].decode(), reply[9 + regex_len :], num_states

    def close(self) -> None:
        """Kill the child (if running) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            stream.close()

    def _started(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            proc = subprocess.Popen(
                self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            self._proc = proc
            try:
                _write_frame(proc, self._vocabulary_bytes)
            except BrokenPipeError:
                self.close()
                raise CompileError("the compile process failed to start") from None
        return self._proc

    def _read_frame(self, proc: subprocess.Popen, deadline: float) -> bytes:
        (length,) = struct.unpack(">I", _read_exact(proc.stdout.fileno(), 4, deadline))
        return _read_exact(proc.stdout.fileno(), length, deadline)


def _write_frame(proc: subprocess.Popen, payload: bytes) -> None:
    proc.stdin.write(struct.pack(">I", len(payload)) + payload)
    proc.stdin.flush()


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    chunks, remaining = [], size
    while remaining:
        timeout = deadline - time.monotonic()
        if timeout <= 0 or not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
