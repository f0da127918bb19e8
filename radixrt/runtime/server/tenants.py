"""Cache salts: which part of the radix cache a request reads and writes (its tenant's namespace).

Requests with different salts never share a cached token, so one tenant cannot learn another's
prompts from cache hits (their timing, or `cached_tokens`).

- Without API keys the salt comes from the request's `cache_salt` alone (vLLM's field): clients that
  send the same salt share cached prefixes, like a shared secret; no salt is the common namespace.
- With API keys (one per tenant) the salt also mixes in the key that authenticated the request. A
  tenant therefore cannot pick another tenant's namespace by sending its `cache_salt`: it would need
  that tenant's key. Within a tenant, `cache_salt` splits it further (e.g. per end user).

What reaches the worker is a hash of the two, never a key or the salt the client sent; stats show a
short hash of that again.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from radixrt.errors import InvalidRequest

MAX_SALT_CHARS = 256


def effective_salt(api_key: str | None, cache_salt: str | None) -> str:
    """The worker's salt for a request authenticated by `api_key` (None: the server has no keys)."""
    if cache_salt is not None and (not isinstance(cache_salt, str) or len(cache_salt) > MAX_SALT_CHARS):
        raise InvalidRequest(f"cache_salt must be a string of at most {MAX_SALT_CHARS} characters", "cache_salt")
    if not api_key and not cache_salt:
        return ""
    h = hashlib.sha256(b"radixrt cache salt\0")
    for part in (api_key or "", cache_salt or ""):
        data = part.encode()
        h.update(len(data).to_bytes(8, "little") + data)  # length-prefixed: ("ab", "c") != ("a", "bc")
    return h.hexdigest()[:32]


def matching_key(given: str | None, keys: Sequence[str]) -> str | None:
    """The configured key equal to `given`, compared in constant time against every key."""
    found = None
    for key in keys:
        if hmac.compare_digest((given or "").encode(), key.encode()):
            found = key
    return found
