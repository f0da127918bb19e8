"""`radixrt cluster`: N radixrt replicas as a Ray Serve application, behind one radixrt ingress.

The ingress is this process: the same HTTP app (native `/generate`, `/v1/*`, `/health`, `/metrics`)
and ZMQ server as `radixrt serve`, over a ClusterFrontend whose link calls the replicas through a
DeploymentHandle routed by RadixTreeRouter. Ray places the replicas (this machine, or the cluster
at `--ray-address`), restarts the ones that die, and a multi-node cluster or KubeRay changes
nothing here. SIGINT/SIGTERM drain like `radixrt serve`, then the application is deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
from typing import Any

from radixrt.cluster import require_ray
from radixrt.cluster.routing import POLICIES, RoutingConfig
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.protocol import WorkerReady

logger = logging.getLogger("radixrt.cluster")

DEPLOYMENT = "replica"


@dataclasses.dataclass(frozen=True)
class ClusterArgs:
    replicas: int = 2
    ray_address: str | None = None  # None: a local Ray instance
    app_name: str = "radixrt"
    routing: str = "prefix"
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.5
    block_tokens: int = 16
    max_published_blocks: int = 8192
    routing_stats_period: float = 0.5
    replica_cpus: float = 1.0
    replica_threads: int = 0  # 0: this machine's cores / replicas (at least 1)
    max_attempts: int = 3

    def routing_config(self) -> dict[str, Any]:
        cfg = RoutingConfig(self.routing, self.balance_abs_threshold, self.balance_rel_threshold, self.block_tokens)
        return dataclasses.asdict(cfg)

    def threads(self) -> int:
        return self.replica_threads or max(1, (os.cpu_count() or 1) // self.replicas)


CLUSTER_HELP = {
    "replicas": "radixrt replicas (Ray Serve replicas, one engine each)",
    "ray_address": "an existing Ray cluster (e.g. auto or ray://head:10001); default: start Ray on this machine",
    "app_name": "the Ray Serve application's name",
    "routing": f"{' | '.join(POLICIES)}: by the replicas' radix trees, or in turn (a baseline)",
    "balance_abs_threshold": "load fallback: in-flight difference between replicas above this ...",
    "balance_rel_threshold": "... and the busiest above this times the idlest: route to the least loaded",
    "block_tokens": "tokens per hashed block in the replicas' cache summaries",
    "max_published_blocks": "block hashes a replica publishes at most (the shallowest first)",
    "routing_stats_period": "seconds between a replica's cache summaries (Ray Serve routing stats)",
    "replica_cpus": "CPUs Ray reserves per replica",
    "replica_threads": "torch threads per replica (0: cores / replicas)",
    "max_attempts": "tries of a request whose replica failed before it sent anything",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ServerArgs.add_cli_args(parser)
    for f in dataclasses.fields(ClusterArgs):
        kind = {"int": int, "float": float}.get(str(f.type), str)
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=CLUSTER_HELP[f.name])


def main(ns: argparse.Namespace) -> int:
    from radixrt.runtime.server.worker import setup_logging

    args = ServerArgs.from_cli(ns)
    cluster = ClusterArgs(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(ClusterArgs)})
    setup_logging(args.log_level, "ingress")
    try:
        require_ray()
        RoutingConfig(**cluster.routing_config())
        if cluster.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {cluster.replicas}")
        return asyncio.run(serve_cluster(args, cluster))
    except (RuntimeError, OSError, ValueError) as e:
        logger.error("radixrt cluster failed: %s", e)
        return 1


def deploy(args: ServerArgs, cluster: ClusterArgs) -> tuple[Any, WorkerReady]:
    """Start (or join) Ray, run the replicas as a Serve application; (its handle, a replica's
    WorkerReady). Blocks until every replica has loaded the model."""
    import ray
    from ray import serve
    from ray.serve.config import ProxyLocation, RequestRouterConfig

    from radixrt.cluster.messages import ready_decoder
    from radixrt.cluster.replica import Replica

    if not ray.is_initialized():
        ray.init(address=cluster.ray_address, ignore_reinit_error=True, log_to_driver=args.log_level == "debug")
    serve.start(proxy_location=ProxyLocation.Disabled)  # the ingress is this process, not Serve's proxy
    router = RequestRouterConfig(
        request_router_class="radixrt.cluster.router:RadixTreeRouter",  # imported where the router runs
        request_router_kwargs=cluster.routing_config(),
        request_routing_stats_period_s=cluster.routing_stats_period,
        request_routing_stats_timeout_s=max(5.0, 4 * cluster.routing_stats_period),
    )
    deployment = serve.deployment(
        Replica,
        name=DEPLOYMENT,
        num_replicas=cluster.replicas,
        max_ongoing_requests=args.max_in_flight,
        ray_actor_options={"num_cpus": cluster.replica_cpus},
        request_router_config=router,
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=args.shutdown_grace,
    )
    replica_args = dataclasses.asdict(args.without_api_keys())
    app = deployment.bind(replica_args, cluster.block_tokens, cluster.max_published_blocks, cluster.threads())
    handle = serve.run(app, name=cluster.app_name, route_prefix=None)
    # NOTE: the first call also starts the handle's router, which learns the replicas' ids
    ready = ready_decoder.decode(handle.info.remote().result())
    return handle, ready


def undeploy(cluster: ClusterArgs) -> None:
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.delete(cluster.app_name)
    if cluster.ray_address is None:
        serve.shutdown()
        ray.shutdown()


async def serve_cluster(args: ServerArgs, cluster: ClusterArgs) -> int:
    from radixrt.cluster.frontend import ClusterFrontend
    from radixrt.cluster.link import ClusterLink
    from radixrt.runtime.http.app import create_app
    from radixrt.runtime.server.launcher import _bind_http, _drain, _Signals, _start_http, _stop_http
    from radixrt.runtime.server.tokenizer_manager import TokenizerManager
    from radixrt.runtime.server.zmq_server import ZmqOptions, ZmqServer
    from radixrt.workers.model_store import resolve_model

    signals = _Signals()
    args = args.replace(model=str(await asyncio.to_thread(resolve_model, args.model)))
    async with contextlib.AsyncExitStack() as stack:
        http_sock = stack.enter_context(_bind_http(args.host, args.port))
        zmq_server = ZmqServer(args.zmq_address, args.api_key, ZmqOptions.from_args(args))
        stack.callback(zmq_server.close)
        logger.info("deploying %d replicas of %s on Ray", cluster.replicas, args.model)
        stack.push_async_callback(asyncio.to_thread, undeploy, cluster)
        handle, ready = await asyncio.to_thread(deploy, args, cluster)
        signals = _Signals()  # again: starting Ray installed its own SIGTERM handler over ours
        link = ClusterLink(handle, cluster.app_name, cluster.block_tokens, cluster.max_attempts)
        stack.callback(link.close)
        # the ingress admits what all replicas together take: their running rows plus their queues
        ingress = args.replace(max_queued_requests=args.max_in_flight * cluster.replicas - args.max_running_requests)
        frontend = ClusterFrontend(link, TokenizerManager(args.model, ingress, ready.context_length))
        tasks = [asyncio.ensure_future(frontend.run()), asyncio.ensure_future(zmq_server.run(frontend))]
        stack.callback(lambda: [t.cancel() for t in tasks])
        http = await _start_http(create_app(frontend, ingress), http_sock, args.log_level)
        stack.push_async_callback(_stop_http, http, frontend)
        print(f"radixrt cluster ready: http://{args.host}:{args.port}  zmq {args.zmq_address}  "
              f"{cluster.replicas} replicas, routing {cluster.routing}", flush=True)  # fmt: skip
        await signals.stop.wait()
        await _drain(frontend, lambda: True, signals, args.shutdown_grace)
    return 0
