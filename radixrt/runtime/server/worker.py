"""Worker process entry: the scheduler loop behind the frontend's ipc:// pipes.

Started by the launcher as `python -m radixrt.runtime.server.worker --config JSON --ipc-dir DIR`.
Exit status: 0 after a requested stop, 1 if loading or the loop crashed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from typing import NoReturn

from radixrt import envs
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.server.zmq_io import WorkerAddresses, ZmqWorkerIO

logger = logging.getLogger("radixrt.worker")


def setup_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s [{role} %(process)d] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown of torch and transformers (~1 s): by now
    everything was stopped and closed explicitly; only the logs and standard streams are flushed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_worker(args: ServerArgs, addresses: WorkerAddresses, parent_pid: int | None = None) -> int:
    """Load the model and run the scheduler until told to stop; return the exit status."""
    from radixrt.runtime.scheduler.loop import Scheduler

    io = ZmqWorkerIO(addresses, parent_pid)

    def request_stop(signum: int, _frame: object) -> None:
        if not io.serving:
            raise KeyboardInterrupt  # still loading: nothing to finish cleanly
        io.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        Scheduler(args, io).run_forever()
        logger.info("worker stopped")
        return 0
    except KeyboardInterrupt:
        return 0
    except Exception:
        logger.exception("worker crashed")
        return 1
    finally:
        io.close()


def worker_argv(args: ServerArgs, ipc_dir: str) -> list[str]:
    """Command line that starts a worker for `args` (the API key stays with the frontend)."""
    config = dataclasses.asdict(args.without_api_keys())
    return [sys.executable, "-m", "radixrt.runtime.server.worker", "--config", json.dumps(config), "--ipc-dir", ipc_dir]


def worker_env() -> dict[str, str]:
    """The launcher's environment without the API key (the worker never needs it)."""
    return envs.without_api_key()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="radixrt.runtime.server.worker")
    parser.add_argument("--config", required=True, help="ServerArgs as JSON")
    parser.add_argument("--ipc-dir", required=True)
    ns = parser.parse_args(argv)
    args = ServerArgs(**json.loads(ns.config))
    setup_logging(args.log_level, "worker")
    return run_worker(args, WorkerAddresses.in_dir(ns.ipc_dir), parent_pid=os.getppid())


if __name__ == "__main__":
    exit_now(main())
