"""`Runtime`: start a local `radixrt serve` and use it as a DSL backend (SGLang's `sgl.Runtime`)."""

from __future__ import annotations

from typing import Any

from radixrt.lang.backends.runtime_endpoint import RuntimeEndpoint
from radixrt.runtime.config import ServerArgs
from radixrt.runtime.server.server_handle import launch_server


class Runtime:
    """A server process on free loopback ports, stopped by `shutdown()` or on leaving a `with` block.

        runtime = radixrt.Runtime(model="default", kv_slots=8192)
        radixrt.set_default_backend(runtime)

    Keywords are `radixrt serve` options (`ServerArgs` fields); SGLang's `model_path` is accepted too.
    `cache_salt` and `pin_s` are the endpoint's request options (see `RuntimeEndpoint`).
    The server logs warnings and errors only unless `log_level="info"` (one line per request).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        model_path: str | None = None,
        start_timeout: float = 900.0,
        request_timeout: float | None = None,
        cache_salt: str | None = None,
        pin_s: float | None = None,
        **server_args: Any,
    ):
        if model is not None and model_path is not None and model != model_path:
            raise ValueError("give model or model_path, not both")
        server_args.setdefault("log_level", "warning")
        args = ServerArgs(model=model or model_path or "default", port=0, **server_args)
        self.server = launch_server(args, timeout=start_timeout)
        self.url = self.server.url
        self.endpoint = RuntimeEndpoint(
            self.server.zmq_address, args.api_key, request_timeout, cache_salt=cache_salt, pin_s=pin_s
        )

    def shutdown(self) -> None:
        self.endpoint.shutdown()
        self.server.shutdown()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
