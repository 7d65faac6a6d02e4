"""Welcome email: a Flask + SQLAlchemy API that enqueues a job in the same transaction as its data.

``POST /users`` with ``{"email": "ada@example.com"}`` inserts a user and enqueues
``send_welcome_email(user.id)`` on the same SQLAlchemy ``Session``, then answers 201 at once; a
``pgjobs worker`` sends the email later. If the transaction rolls back (the email is taken, or the
request asks for a simulated failure with ``"fail": true``), neither the user nor the job exists,
so no email ever goes to a user who was never saved.

"Sending" is an insert into the ``outbox`` table, with at most one row per user: pgjobs runs a job
at least once, so the job is written to be safe to run twice.

Run it (see README.md beside this file)::

    export PGJOBS_DATABASE_URL=postgresql://localhost/welcome
    pgjobs migrate
    flask --app docs.examples.welcome_email.app init-db
    flask --app docs.examples.welcome_email.app run
    pgjobs --app docs.examples.welcome_email.app:jobs worker
"""

from __future__ import annotations

import functools
import os
from datetime import datetime
from typing import Any

import psycopg
from flask import Flask, request
from sqlalchemy import DateTime, Engine, ForeignKey, String, create_engine, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import pgjobs
from pgjobs.testing import checkpoint

jobs = pgjobs.App()
"""The job registry the worker loads: ``pgjobs --app docs.examples.welcome_email.app:jobs``."""


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OutboxEmail(Base):
    """An email handed to the (pretend) mail service. One welcome email per user."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def sqlalchemy_url(url: str) -> str:
    """``url`` with the psycopg 3 driver, which ``using(session).enqueue(...)`` needs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def database_url_from_environment() -> str:
    url = os.environ.get("PGJOBS_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError(
            "set PGJOBS_DATABASE_URL (or DATABASE_URL), e.g. postgresql://localhost/welcome"
        )
    return url


def create_tables(engine: Engine) -> None:
    """Create ``users`` and ``outbox`` if missing (``pgjobs migrate`` makes pgjobs' own)."""
    Base.metadata.create_all(engine)


@jobs.job(name="welcome_email.send", queue="default", max_attempts=10)
def send_welcome_email(user_id: int) -> None:
    """Send the welcome email of user ``user_id``; running it twice sends one email."""
    with Session(_job_engine(str(jobs.settings.database_url))) as session, session.begin():
        user = session.get(User, user_id)
        if user is None:  # the user was deleted since: nobody to welcome
            return
        session.execute(
            insert(OutboxEmail)
            .values(user_id=user.id, email=user.email)
            .on_conflict_do_nothing(index_elements=[OutboxEmail.user_id])
        )
    checkpoint("sent")  # committed: a crash test kills the worker here (docs/testing.md)


@functools.cache
def _job_engine(database_url: str) -> Engine:
    """The worker's engine, on the database the worker itself uses."""
    return create_engine(sqlalchemy_url(database_url), pool_size=2, max_overflow=8)


class SimulatedFailure(Exception):
    """Raised after the enqueue when a request asks for it, to show that both roll back."""


def create_app(database_url: str | None = None) -> Flask:
    """The Flask app; ``database_url`` defaults to PGJOBS_DATABASE_URL, then DATABASE_URL."""
    app = Flask(__name__)
    engine = create_engine(sqlalchemy_url(database_url or database_url_from_environment()))
    app.extensions["welcome_email.engine"] = engine

    @app.post("/users")
    def create_user() -> tuple[dict[str, Any], int]:
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict):
            payload = {}
        email = payload.get("email")
        if not isinstance(email, str) or "@" not in email:
            return {"error": 'send JSON like {"email": "ada@example.com"}'}, 400
        try:
            with Session(engine) as session, session.begin():
                user = User(email=email.strip().lower())
                session.add(user)
                session.flush()  # INSERT now: assigns user.id, or fails on a taken email
                send_welcome_email.using(session).enqueue(user.id)  # same transaction
                if payload.get("fail") is True:
                    raise SimulatedFailure
                created = {"id": user.id, "email": user.email}
        except IntegrityError as exc:
            if not isinstance(exc.orig, psycopg.errors.UniqueViolation):
                raise
            return {"error": f"{email} is already registered"}, 409
        except SimulatedFailure:
            return {"error": "simulated failure: the user and the job were rolled back"}, 500
        return created, 201

    @app.cli.command("init-db")
    def init_db() -> None:
        """Create the example's users and outbox tables."""
        create_tables(engine)
        print("created tables users, outbox")

    return app
