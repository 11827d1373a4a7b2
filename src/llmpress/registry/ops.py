"""Registry tables for operating models: aliases and their history, A/B tests, responses, feedback.

Created by migration 0005. Kept here (not in tables.py) so the ops work stays in its own module;
they share `Base`, so one metadata describes the whole schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column

from llmpress.registry.tables import Base


class AliasRow(Base):
    """A name (prod, canary, ...) that points at one artifact through its current history event."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(String(64), index=True)
    event_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AliasEventRow(Base):
    """One change of an alias: deploy, rollback or promote. `prev_event_id` is the event that was
    current before this one took effect, so a rollback walks back the chain of deploys."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # deploy | rollback | promote
    artifact_id: Mapped[str] = mapped_column(String(64))
    prev_event_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AbTestRow(Base):
    """An A/B test: arms with weights and the artifact each arm was pinned to at start."""

    __tablename__ = "ab_tests"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    alias: Mapped[str | None] = mapped_column(String(64), nullable=True)  # moved by `ab stop --promote`
    arms: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # [{name, weight, target, artifact_id}]
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | stopped
    promoted: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AbResponseRow(Base):
    """One response served inside an A/B test: its arm and how it went (feedback refers to its id)."""

    __tablename__ = "ab_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the response id clients see
    test: Mapped[str] = mapped_column(ForeignKey("ab_tests.name", ondelete="CASCADE"), index=True)
    arm: Mapped[str] = mapped_column(String(64))
    user: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[int] = mapped_column(Integer, default=200)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class FeedbackRow(Base):
    """Feedback on one response: a numeric `rating` (0/1 thumbs or a score) and/or a `label`."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    response_id: Mapped[str] = mapped_column(ForeignKey("ab_responses.id", ondelete="CASCADE"), index=True)
    rating: Mapped[float | None] = mapped_column(Float, nullable=True)
    label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def alias_target(reg: Any, name: str) -> str | None:
    """The artifact id an alias points at, or None when `name` is not an alias (one query)."""
    with reg.session() as s:
        return s.scalar(select(AliasRow.artifact_id).where(AliasRow.name == name))
