"""API-key authentication: a FastAPI dependency per scope (keys are hashed in the registry)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Depends, Request

from llmpress.errors import PermissionDeniedError
from llmpress.registry.keys import SCOPES, KeyInfo, KeyStore


def require(keys: KeyStore | None, scope: str) -> Any:
    """A dependency that verifies the bearer key and its scope; None when the server runs without auth."""
    assert scope in SCOPES

    async def dep(request: Request) -> KeyInfo | None:
        if keys is None:
            return None
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else None
        key = await asyncio.to_thread(keys.verify, secret)
        request.state.key_id = key.id
        if scope not in key.scopes and "admin" not in key.scopes:
            raise PermissionDeniedError(f"API key {key.id} lacks the {scope!r} scope",
                                        f"create a key with --scopes {scope}")
        return key

    return Depends(dep)
