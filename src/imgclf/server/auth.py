"""API key check for management routes: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Without a configured key the management API is off (403): an open one would let any client
unload the models of a server that faces the network.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from imgclf.server.errors import ApiError

# Declared for the OpenAPI document; require_api_key reads the Authorization header itself.
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


ENABLE_HINT = "start the server with --api-key KEY (or set IMGCLF_API_KEY) to enable it"
MANAGEMENT_OFF = f"the management API is off on this server: {ENABLE_HINT}"


def key_matches(given: str | None, expected: str) -> bool:
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> None:
    expected: str | None = request.app.state.imgclf.config.api_key
    if expected is None:
        raise ApiError(403, "management_disabled", MANAGEMENT_OFF)
    presented = [header_key] if header_key is not None else []
    authorization = request.headers.get("authorization")
    if authorization is not None:
        # Any Authorization header counts: one that is not "Bearer <key>" is a wrong credential.
        scheme, _, credentials = authorization.partition(" ")
        presented.append(credentials.strip() if scheme.lower() == "bearer" else "")
    if not presented:
        raise ApiError(401, "unauthorized", "this route needs the API key: send 'Authorization: Bearer KEY' "
                                            "or 'X-API-Key: KEY'", headers={"WWW-Authenticate": "Bearer"})
    # Every credential presented must be right: a wrong one is refused even beside a right one.
    if not all(key_matches(k, expected) for k in presented):
        raise ApiError(401, "unauthorized", "wrong API key", headers={"WWW-Authenticate": "Bearer"})
