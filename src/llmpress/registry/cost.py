"""Gateway tables and queries: encrypted provider keys, per-request cost ledger, money budgets per client key.

Money is stored as integer nano-USD (1e-9 USD): `tokens x price_per_mtok` is then an integer times a
price with at most 3 decimals, sums are exact, and reports round to the cent only when printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Integer, LargeBinary, String, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from llmpress.errors import ConfigError, NotFoundError
from llmpress.registry import Registry, get_registry
from llmpress.registry.tables import ApiKeyRow, Base

NANO = 1_000_000_000


class ProviderKeyRow(Base):
    """One provider key for a gateway target, Fernet-encrypted; `retired_at` starts its grace period."""

    __tablename__ = "provider_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(255), index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(16))  # sha256 prefix: tells keys apart, reveals nothing
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RequestCostRow(Base):
    """One gateway request: client key, route, target, upstream model, usage, cost, latency, status."""

    __tablename__ = "gateway_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    route: Mapped[str] = mapped_column(String(255))
    target: Mapped[str | None] = mapped_column(String(255), index=True, nullable=True)
    model: Mapped[str] = mapped_column(String(255))
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    usage_source: Mapped[str] = mapped_column(String(16), default="upstream")  # upstream | estimated
    cost_nusd: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    stream: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)


class KeyBudgetRow(Base):
    """A client key's money budget and what it has spent (nano-USD)."""

    __tablename__ = "key_budgets"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    budget_nusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    spent_nusd: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def usd_to_nano(usd: float) -> int:
    return round(usd * NANO)


def cost_nusd(tokens_in: int, tokens_out: int, input_per_mtok: float, output_per_mtok: float) -> int:
    """tokens x USD-per-million-tokens, in nano-USD (tokens x price x 1000). Exact for prices with up to 3
    decimals ($0.125/Mtok); finer prices are rounded to the nano-USD once per request."""
    pin = round(input_per_mtok * 1_000_000)  # micro-USD per Mtok = pico-USD per token
    pout = round(output_per_mtok * 1_000_000)
    # pico-USD -> nano-USD: / 1000, rounded half up once per request
    return (tokens_in * pin + tokens_out * pout + 500) // 1000


@dataclass
class Budget:
    key_id: str
    budget_nusd: int | None
    spent_nusd: int


class CostLedger:
    """Cost rows, budgets and provider-key rows over one registry."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.reg = registry or get_registry()

    # -- cost ledger -------------------------------------------------------------------
    def record(self, row: RequestCostRow) -> None:
        """Store one request's cost and charge it to the key's money budget, in one transaction."""
        self.record_many([row])

    def record_many(self, rows: list[RequestCostRow]) -> None:
        """Store requests' costs and charge each key once for its rows, in one transaction (a gateway under
        load commits what settled meanwhile together: one write instead of one per request)."""
        charge: dict[str, int] = {}
        for row in rows:
            if row.key_id is not None and row.cost_nusd:
                charge[row.key_id] = charge.get(row.key_id, 0) + row.cost_nusd
        with self.reg.session.begin() as s:
            s.add_all(rows)
            for key_id, nusd in charge.items():
                n = s.execute(update(KeyBudgetRow).where(KeyBudgetRow.key_id == key_id)
                              .values(spent_nusd=KeyBudgetRow.spent_nusd + nusd))
                if not n.rowcount:
                    s.add(KeyBudgetRow(key_id=key_id, budget_nusd=None, spent_nusd=nusd))

    def rows(self, since: datetime | None = None) -> list[RequestCostRow]:
        with self.reg.session() as s:
            q = select(RequestCostRow).order_by(RequestCostRow.id)
            if since is not None:
                q = q.where(RequestCostRow.created_at >= since)
            return list(s.scalars(q))

    # -- money budgets -----------------------------------------------------------------
    def set_budget(self, key_ref: str, usd: float | None) -> Budget:
        if usd is not None and usd < 0:
            raise ConfigError(f"a budget must be >= 0 USD, got {usd}", "pass --usd 0 to block spending, omit for none")
        with self.reg.session.begin() as s:
            key = s.get(ApiKeyRow, key_ref)
            if key is None:
                rows = list(s.scalars(select(ApiKeyRow).where(ApiKeyRow.name == key_ref)))
                key = rows[0] if len(rows) == 1 else None
            if key is None:
                raise NotFoundError(f"no API key {key_ref!r}", "run `llmpress keys list` to see key ids and names")
            row = s.get(KeyBudgetRow, key.id) or KeyBudgetRow(key_id=key.id, spent_nusd=0)
            row.budget_nusd = None if usd is None else usd_to_nano(usd)
            row.updated_at = datetime.now(UTC)
            s.add(row)
            return Budget(key.id, row.budget_nusd, row.spent_nusd or 0)

    def budget(self, key_id: str) -> Budget:
        with self.reg.session() as s:
            row = s.get(KeyBudgetRow, key_id)
            return Budget(key_id, row.budget_nusd, row.spent_nusd or 0) if row else Budget(key_id, None, 0)

    # -- provider keys (ciphertext only; the vault encrypts and decrypts) ---------------
    def provider_keys(self, target: str | None = None) -> list[ProviderKeyRow]:
        with self.reg.session() as s:
            q = select(ProviderKeyRow).order_by(ProviderKeyRow.target, ProviderKeyRow.id)
            if target is not None:
                q = q.where(ProviderKeyRow.target == target)
            return list(s.scalars(q))

    def add_provider_key(self, target: str, ciphertext: bytes, fingerprint: str, grace_until: datetime | None,
                         replace: bool) -> None:
        """Make a new key current for `target`; older live keys stay usable until `grace_until` (then expire)."""
        now = datetime.now(UTC)
        with self.reg.session.begin() as s:
            live = list(s.scalars(select(ProviderKeyRow).where(ProviderKeyRow.target == target,
                                                               ProviderKeyRow.retired_at.is_(None))))
            if live and not replace:
                raise ConfigError(f"target {target!r} already has a provider key",
                                  f"use `llmpress providers rotate {target}` to replace it with a grace period")
            for r in live:
                r.retired_at = now
                r.expires_at = grace_until or now
            s.add(ProviderKeyRow(target=target, ciphertext=ciphertext, fingerprint=fingerprint))

    def remove_provider_keys(self, target: str) -> int:
        with self.reg.session.begin() as s:
            rows = list(s.scalars(select(ProviderKeyRow).where(ProviderKeyRow.target == target)))
            for r in rows:
                s.delete(r)
            return len(rows)

    def provider_keys_version(self) -> tuple[int, int]:
        """(row count, max id): changes whenever a key is set, rotated or removed (cheap poll for hot reload)."""
        with self.reg.session() as s:
            n, m = s.execute(select(func.count(ProviderKeyRow.id), func.max(ProviderKeyRow.id))).one()
            return int(n or 0), int(m or 0)
