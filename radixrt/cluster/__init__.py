"""radixrt replicas on Ray Serve, routed by their radix trees (the `cluster` extra: Ray Serve)."""

from __future__ import annotations

RAY_SERVE_VERSION = "2.60.0"
INSTALL_HINT = "pip install 'radixrt[cluster]'"


def require_ray() -> None:
    """Raise RuntimeError naming the extra when Ray Serve is not installed."""
    try:
        import ray.serve  # noqa: F401
        from ray.serve.request_router import RequestRouter  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"radixrt cluster needs Ray Serve ({e}); install it with: {INSTALL_HINT}") from None
