"""Call metadata of the contract: the bearer token every call but health checks carries, the id a
client gives a call (it appears in the server's logs and in error messages), and the hint a full
server sends with RESOURCE_EXHAUSTED (trailing metadata: milliseconds to wait before a retry)."""

from __future__ import annotations

AUTHORIZATION = "authorization"
REQUEST_ID = "x-request-id"
RETRY_AFTER = "retry-after-ms"


def bearer(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that carries `token`."""
    return ((AUTHORIZATION, f"Bearer {token}"),)
