"""What the "Also read" engine keeps: its fitted text model, a vector per story, the lists.

All of it lives in the database, so every archiver process sees every other's changes: a
process may cache vectors, but reads those changed since (``seq``) before each use.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    LargeBinary,
    Sequence,
    SmallInteger,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.db import Base, UTCDateTime, utcnow

VECTOR_SEQ = Sequence("article_vectors_seq")


class RelatedModel(Base):
    """A fitted text model. One is active; a refit builds the next beside it and switches
    in one transaction, so no reader ever sees a half-built list."""

    __tablename__ = "related_models"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    articles: Mapped[int] = mapped_column(Integer)  # the corpus it was fitted on
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ArticleVector(Base):
    """A listed story's vector under a model; ``vector`` None: it left the lists (archived,
    retracted). ``seq`` grows with every write, for the processes' caches."""

    __tablename__ = "article_vectors"

    model_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    article_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    seq: Mapped[int] = mapped_column(BigInteger, VECTOR_SEQ, server_default=VECTOR_SEQ.next_value())

    __table_args__ = (Index("ix_article_vectors_seq", "model_id", "seq"),)


class RelatedItem(Base):
    """One place of a story's list: ``rank`` 0 first; ``score`` None for a pinned story."""

    __tablename__ = "related_items"

    article_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    rank: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    related_id: Mapped[str] = mapped_column(String(36), index=True)
    score: Mapped[float | None] = mapped_column(Float)
