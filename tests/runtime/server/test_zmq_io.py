"""The frontend <-> worker pipes: typed frames both ways, malformed frames dropped, stop signals."""

from __future__ import annotations

import asyncio
import os
import stat
import time

import zmq

from radixrt.runtime import protocol
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.server.zmq_io import FrontendWorkerLink, WorkerAddresses, ZmqWorkerIO


def test_ipc_dir_is_private(tmp_path):
    path = ServerArgs(ipc_dir=str(tmp_path / "ipc")).make_ipc_dir()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert WorkerAddresses.in_dir(path).to_worker == f"ipc://{path}/to_worker"


def test_messages_cross_both_ways_and_malformed_frames_are_dropped(tmp_path):
    addresses = WorkerAddresses.in_dir(tmp_path)

    async def scenario() -> tuple[list, object]:
        link = FrontendWorkerLink(addresses)
        worker = ZmqWorkerIO(addresses)
        try:
            worker.send(protocol.WorkerReady(context_length=8, kv_slots=4, vocab_size=10, eos_token_ids=[2]))
            assert (await link.wait_ready(lambda: True, timeout=5)).kv_slots == 4
            raw = link.ctx.socket(zmq.PUSH)  # a stray writer on the worker's pipe
            raw.connect(addresses.to_worker)
            await raw.send(b"\xc1garbage")
            raw.close(linger=1000)
            link.send(protocol.TokenizedRequest(rid="a", input_ids=[1, 2]))
            link.send(protocol.Abort(rid="a"))
            received = []
            deadline = time.monotonic() + 5
            while len(received) < 2 and time.monotonic() < deadline:
                received += await asyncio.to_thread(worker.recv, 0.5)
            worker.send(protocol.StatsOut(stats={"ok": 1}))
            return received, await asyncio.wait_for(link.recv(), 5)
        finally:
            worker.close()
            link.close()

    received, answer = asyncio.run(scenario())
    assert received == [protocol.TokenizedRequest(rid="a", input_ids=[1, 2]), protocol.Abort(rid="a")]
    assert answer == protocol.StatsOut(stats={"ok": 1})


def test_recv_times_out_empty_and_returns_none_once_stop_is_requested(tmp_path):
    worker = ZmqWorkerIO(WorkerAddresses.in_dir(tmp_path))
    try:
        assert worker.recv(0) == [] and worker.recv(0.05) == []
        worker.stop_requested = True
        assert worker.recv(None) is None
    finally:
        worker.close()


def test_recv_returns_none_when_the_parent_is_gone(tmp_path):
    worker = ZmqWorkerIO(WorkerAddresses.in_dir(tmp_path), parent_pid=os.getppid() + 1_000_000)
    try:
        assert worker.recv(None) is None
    finally:
        worker.close()
