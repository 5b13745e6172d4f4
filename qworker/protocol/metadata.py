"""Call metadata of the contract: the bearer token every call but health checks carries."""

from __future__ import annotations

AUTHORIZATION = "authorization"


def bearer(token: str) -> tuple[tuple[str, str]]:
    """The call metadata that carries `token`."""
    return ((AUTHORIZATION, f"Bearer {token}"),)
