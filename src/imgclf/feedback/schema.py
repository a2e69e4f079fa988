"""The tables: feedback records, the images they point at, and the optional prediction log.

The migrations in :mod:`imgclf.feedback.migrations` create these; the models here are how the
code reads and writes them (a change to one needs a new migration).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Status = Literal["pending", "accepted", "rejected"]
STATUSES: tuple[Status, ...] = ("pending", "accepted", "rejected")

# Column sizes: a label or model name longer than these is refused before it reaches the database.
NAME_MAX = 200
LABEL_MAX = 500
CLIENT_MAX = 200


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    })


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Blob(Base):
    """An image file in the blob store, by the SHA-256 of its bytes (stored once however often cited)."""

    __tablename__ = "feedback_blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Feedback(Base):
    """One person's answer about one image: the label it should have, and its review status."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), ForeignKey("feedback_blobs.sha256"), index=True)
    model: Mapped[str] = mapped_column(String(NAME_MAX))
    version: Mapped[str] = mapped_column(String(NAME_MAX))
    predicted_label: Mapped[str | None] = mapped_column(String(LABEL_MAX), nullable=True)
    predicted_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    label: Mapped[str] = mapped_column(String(LABEL_MAX))
    client: Mapped[str] = mapped_column(String(CLIENT_MAX))  # the client address, or who used the CLI
    submitted_by: Mapped[str | None] = mapped_column(String(CLIENT_MAX), nullable=True)  # as the client named itself
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(CLIENT_MAX), nullable=True)

    __table_args__ = (Index("ix_feedback_status_model", "status", "model"),)


class PredictionLog(Base):
    """One served prediction (when the server logs them): which model version said what, how fast."""

    __tablename__ = "prediction_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(NAME_MAX))
    version: Mapped[str] = mapped_column(String(NAME_MAX))
    sha256: Mapped[str] = mapped_column(String(64))
    top_k: Mapped[str] = mapped_column(Text)  # JSON: [{"index", "label", "score"}, ...]
    decode_ms: Mapped[float] = mapped_column(Float)
    batch_ms: Mapped[float] = mapped_column(Float)
    total_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_prediction_log_model_created", "model", "created_at"),)
