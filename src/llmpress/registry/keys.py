"""API keys and usage in the registry: create / list / revoke / rotate, verify a secret, record usage.

A secret is `lp_<id>_<random>` with 256 bits of randomness; only its sha256 is stored. The public
`id` finds the row, then the hashes are compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from llmpress.errors import AuthError, ConfigError, NotFoundError
from llmpress.registry import Registry, get_registry
from llmpress.registry.tables import ApiKeyRow, DeploymentRow, KeyReservationRow, UsageRow

SCOPES = ("completions", "chat", "models", "admin")


@dataclass
class KeyInfo:
    """What the server needs to know about a verified key (no secret)."""

    id: str
    name: str
    scopes: list[str]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    token_budget: int | None
    tokens_used: int
    tokens_reserved: int = 0


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _new_secret(key_id: str) -> str:
    return f"lp_{key_id}_{secrets.token_urlsafe(32)}"


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(row.id, row.name, list(row.scopes or []), row.requests_per_minute, row.tokens_per_minute,
                   row.token_budget, row.tokens_used or 0, row.tokens_reserved or 0)


class KeyStore:
    """Key and usage queries over one registry."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.reg = registry or get_registry()

    def create(self, name: str, scopes: list[str] | None = None, expires_days: float | None = None,
               requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
               token_budget: int | None = None) -> tuple[KeyInfo, str]:
        """Create a key; returns its info and the secret (shown once, never stored)."""
        if not name.strip():
            raise ConfigError("the key name is empty", "pass a name, e.g. `llmpress keys create ci-bot`", param="name")
        scopes = list(scopes) if scopes else ["completions", "chat", "models"]
        bad = [s for s in scopes if s not in SCOPES]
        if bad:
            raise ConfigError(f"unknown scope(s) {', '.join(bad)}", f"use some of {', '.join(SCOPES)}", param="scopes")
        for label, v in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute),
                         ("token_budget", token_budget), ("expires_days", expires_days)):
            if v is not None and v <= 0:
                raise ConfigError(f"{label} must be > 0, got {v}", f"omit --{label.replace('_', '-')} for no limit",
                                  param=label)
        key_id = uuid.uuid4().hex[:10]
        secret = _new_secret(key_id)
        expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
        row = ApiKeyRow(id=key_id, name=name, secret_sha256=_hash(secret), scopes=scopes, expires_at=expires,
                        requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
                        token_budget=token_budget, tokens_used=0)
        with self.reg.session.begin() as s:
            s.add(row)
        return _info(row), secret

    def list(self) -> list[dict[str, Any]]:
        with self.reg.session() as s:
            rows = list(s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)))
        now = datetime.now(UTC)
        out = []
        for r in rows:
            exp = _aware(r.expires_at)
            status = "revoked" if r.revoked_at else ("expired" if exp and exp <= now else "active")
            out.append({"id": r.id, "name": r.name, "scopes": r.scopes, "status": status,
                        "created_at": r.created_at, "expires_at": r.expires_at,
                        "requests_per_minute": r.requests_per_minute, "tokens_per_minute": r.tokens_per_minute,
                        "token_budget": r.token_budget, "tokens_used": r.tokens_used})
        return out

    def _get(self, s: Any, ref: str) -> ApiKeyRow:
        row = s.get(ApiKeyRow, ref)
        if row is None:
            rows = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.name == ref)))
            if len(rows) > 1:
                raise NotFoundError(f"{len(rows)} keys are named {ref!r}", "pass the key id instead (llmpress keys list)")
            row = rows[0] if rows else None
        if row is None:
            raise NotFoundError(f"no API key {ref!r}", "run `llmpress keys list` to see key ids and names")
        return row

    def revoke(self, ref: str) -> KeyInfo:
        with self.reg.session.begin() as s:
            row = self._get(s, ref)
            row.revoked_at = row.revoked_at or datetime.now(UTC)
            return _info(row)

    def rotate(self, ref: str) -> tuple[KeyInfo, str]:
        """Replace a key's secret (same id, limits and usage); the old secret stops working at once."""
        with self.reg.session.begin() as s:
            row = self._get(s, ref)
            if row.revoked_at:
                raise ConfigError(f"key {row.id} is revoked", "create a new key instead")
            secret = _new_secret(row.id)
            row.secret_sha256 = _hash(secret)
            return _info(row), secret

    def verify(self, secret: str | None) -> KeyInfo:
        """The key a secret belongs to; AuthError when missing, unknown, wrong, revoked or expired."""
        fix = "send `Authorization: Bearer <key>`; create one with `llmpress keys create NAME`"
        if not secret:
            raise AuthError("missing API key", fix)
        parts = secret.split("_")
        key_id = parts[1] if len(parts) >= 3 and parts[0] == "lp" else ""
        with self.reg.session() as s:
            row = s.get(ApiKeyRow, key_id) if key_id else None
        digest = _hash(secret)
        if row is None or not hmac.compare_digest(digest, row.secret_sha256):
            raise AuthError("invalid API key", fix)
        if row.revoked_at is not None:
            raise AuthError(f"API key {row.id} ({row.name}) was revoked", "ask for a new key")
        exp = _aware(row.expires_at)
        if exp is not None and exp <= datetime.now(UTC):
            raise AuthError(f"API key {row.id} ({row.name}) expired at {exp.isoformat(timespec='seconds')}",
                            "rotate it or create a new one")
        return _info(row)

    def record_usage(self, key_id: str | None, request_id: str, model: str, endpoint: str, tokens_in: int,
                     tokens_out: int, latency_ms: float, status: int, reservation: str | None = None) -> None:
        """One usage row and the key's tokens_used, in one transaction that also releases the request's
        budget reservation (if any): usage and budget can never disagree, whatever path the request took."""
        with self.reg.session.begin() as s:
            s.add(UsageRow(key_id=key_id, request_id=request_id[:64], model=model, endpoint=endpoint,
                           tokens_in=tokens_in, tokens_out=tokens_out, latency_ms=latency_ms, status=status))
            used = tokens_in + tokens_out
            held = self._release(s, reservation) if reservation else 0
            if key_id is not None and (used or held):
                s.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id)
                          .values(tokens_used=ApiKeyRow.tokens_used + used,
                                  tokens_reserved=ApiKeyRow.tokens_reserved - held))

    # -- budget reservations (requests in flight count against the budget) ----------------
    def reserve(self, key_id: str, tokens: int, ttl_s: float) -> str | None:
        """Hold `tokens` of a key's budget for a request in flight; None when the budget cannot cover it.

        One conditional UPDATE does the check and the hold atomically, so concurrent requests, in one
        process or in several sharing the database, can never overspend the budget together.
        """
        res_id = uuid.uuid4().hex
        with self.reg.session.begin() as s:
            r = s.execute(update(ApiKeyRow)
                          .where(ApiKeyRow.id == key_id, ApiKeyRow.token_budget.is_not(None),
                                 ApiKeyRow.tokens_used + ApiKeyRow.tokens_reserved + tokens <= ApiKeyRow.token_budget)
                          .values(tokens_reserved=ApiKeyRow.tokens_reserved + tokens))
            if r.rowcount != 1:
                return None
            s.add(KeyReservationRow(id=res_id, key_id=key_id, tokens=tokens,
                                    expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s)))
        return res_id

    def _release(self, s: Any, reservation: str) -> int:
        row = s.get(KeyReservationRow, reservation)
        if row is None:  # already released (or reclaimed after expiry)
            return 0
        n = s.execute(delete(KeyReservationRow).where(KeyReservationRow.id == reservation)).rowcount
        return row.tokens if n == 1 else 0

    def release(self, reservation: str) -> None:
        """Give a reservation back without charging anything (the request never ran)."""
        with self.reg.session.begin() as s:
            row = s.get(KeyReservationRow, reservation)
            held = self._release(s, reservation)
            if held and row is not None:
                s.execute(update(ApiKeyRow).where(ApiKeyRow.id == row.key_id)
                          .values(tokens_reserved=ApiKeyRow.tokens_reserved - held))

    def reclaim_expired(self) -> int:
        """Release reservations whose request can no longer be running (e.g. its server was killed)."""
        now = datetime.now(UTC)
        with self.reg.session() as s:
            ids = list(s.scalars(select(KeyReservationRow.id).where(KeyReservationRow.expires_at < now)))
        for rid in ids:
            self.release(rid)
        return len(ids)

    def usage(self, key_id: str | None = None) -> list[UsageRow]:
        with self.reg.session() as s:
            q = select(UsageRow).order_by(UsageRow.id)
            if key_id is not None:
                q = q.where(UsageRow.key_id == key_id)
            return list(s.scalars(q))

    # -- deployments ---------------------------------------------------------------------
    def start_deployment(self, artifact_id: str, host: str, port: int, config: dict[str, Any]) -> str:
        dep_id = uuid.uuid4().hex[:12]
        with self.reg.session.begin() as s:
            s.add(DeploymentRow(id=dep_id, artifact_id=artifact_id, host=host, port=port, config=config))
        return dep_id

    def stop_deployment(self, dep_id: str) -> None:
        with self.reg.session.begin() as s:
            row = s.get(DeploymentRow, dep_id)
            if row is not None:
                row.stopped_at = datetime.now(UTC)
