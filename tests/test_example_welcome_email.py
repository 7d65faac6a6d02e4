"""docs/examples/welcome_email: the job exists only for the request whose transaction commits,
and a real ``pgjobs worker`` process sends exactly one email for it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

import pgjobs
from docs.examples.welcome_email import app as example
from pgjobs.testing import Crash, FakeQueue, Inline
from tests.helpers import invoke, run_cli, run_program

pytestmark = pytest.mark.fresh_database  # the example creates tables of its own

WORKER_APP = "docs.examples.welcome_email.app:jobs"


@pytest.fixture
def client(database_url: str) -> Iterator[FlaskClient]:
    flask_app = example.create_app(database_url)
    engine = flask_app.extensions["welcome_email.engine"]
    example.create_tables(engine)
    try:
        yield flask_app.test_client()
    finally:
        engine.dispose()


def rows(db: psycopg.Connection[Any], query: str) -> list[tuple[Any, ...]]:
    return db.execute(query).fetchall()


def test_only_the_committed_signup_gets_a_welcome_email(
    client: FlaskClient, db: psycopg.Connection[Any], database_url: str
) -> None:
    created = client.post("/users", json={"email": "ada@example.com"})
    assert created.status_code == 201, created.get_json()
    ada = created.get_json()
    assert ada["email"] == "ada@example.com"

    duplicate = client.post("/users", json={"email": "ada@example.com"})
    assert duplicate.status_code == 409
    assert "already registered" in duplicate.get_json()["error"]

    failed = client.post("/users", json={"email": "bob@example.com", "fail": True})
    assert failed.status_code == 500
    assert "rolled back" in failed.get_json()["error"]

    # 201 came back before any worker ran: the job waits in the queue, nothing is sent yet
    assert rows(db, "SELECT id, email FROM users") == [(ada["id"], "ada@example.com")]
    assert rows(db, "SELECT name, args, state FROM pgjobs.jobs") == [
        ("welcome_email.send", [ada["id"]], "available")
    ]
    assert rows(db, "SELECT * FROM outbox") == []

    worker = run_cli(database_url, "--app", WORKER_APP, "worker", "--burst")
    assert worker.returncode == 0, worker.stderr

    assert rows(db, "SELECT user_id, email FROM outbox") == [(ada["id"], "ada@example.com")]
    assert rows(db, "SELECT args, state, attempt FROM pgjobs.jobs") == [
        ([ada["id"]], "completed", 1)
    ]
    assert rows(db, "SELECT count(*) FROM users WHERE email = 'bob@example.com'") == [(0,)]


def test_running_the_job_again_sends_no_second_email(
    client: FlaskClient, db: psycopg.Connection[Any], database_url: str
) -> None:
    user_id = client.post("/users", json={"email": "Grace@Example.com"}).get_json()["id"]
    first = run_cli(database_url, "--app", WORKER_APP, "worker", "--burst")
    assert first.returncode == 0, first.stderr
    (job_id,) = db.execute("SELECT id FROM pgjobs.jobs").fetchone()  # type: ignore[misc]

    # at-least-once delivery: a job may run twice; the outbox still gets one email
    again = invoke(database_url, "retry", str(job_id))
    assert again.returncode == 0, again.stderr
    second = run_cli(database_url, "--app", WORKER_APP, "worker", "--burst")
    assert second.returncode == 0, second.stderr

    assert rows(db, "SELECT state, attempt FROM pgjobs.jobs") == [("completed", 2)]
    assert rows(db, "SELECT user_id, email FROM outbox") == [(user_id, "grace@example.com")]


@pytest.mark.parametrize(
    "body",
    [{}, {"email": 42}, {"email": "no-at-sign"}, ["ada@example.com"]],
    ids=["no-email", "not-a-string", "not-an-address", "not-an-object"],
)
def test_bad_request_writes_nothing(
    client: FlaskClient, db: psycopg.Connection[Any], body: Any
) -> None:
    response = client.post("/users", json=body)
    assert response.status_code == 400
    assert rows(db, "SELECT count(*) FROM users") == [(0,)]
    assert rows(db, "SELECT count(*) FROM pgjobs.jobs") == [(0,)]


def test_flask_init_db_command_creates_the_tables(empty_database_url: str) -> None:
    flask = str(Path(sys.executable).parent / "flask")
    init = run_program(
        empty_database_url, [flask, "--app", "docs.examples.welcome_email.app", "init-db"]
    )
    assert init.returncode == 0, init.stderr
    with psycopg.connect(empty_database_url) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert sorted(tables) == [("outbox",), ("users",)]


# -- the same example under pgjobs.testing's fixtures: fake, inline, real with a crash ----------


@pytest.fixture
def pgjobs_app() -> pgjobs.App:
    return example.jobs


def test_fake_mode_records_the_email_to_send(
    pgjobs_fake: FakeQueue,
    pgjobs_real: pgjobs.App,
    client: FlaskClient,
    db: psycopg.Connection[Any],
) -> None:
    ada = client.post("/users", json={"email": "ada@example.com"}).get_json()
    pgjobs_fake.assert_enqueued(example.send_welcome_email, args=[ada["id"]])
    assert rows(db, "SELECT count(*) FROM pgjobs.jobs") == [(0,)]  # recorded, not written

    assert pgjobs_fake.drain().completed == 1  # runs the job here, on the real tables
    assert rows(db, "SELECT user_id FROM outbox") == [(ada["id"],)]


def test_inline_mode_sends_the_email_when_the_signup_commits(
    pgjobs_inline: Inline, client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    ada = client.post("/users", json={"email": "ada@example.com"}).get_json()
    assert rows(db, "SELECT user_id FROM outbox") == [(ada["id"],)]  # sent at the commit

    failed = client.post("/users", json={"email": "bob@example.com", "fail": True})
    assert failed.status_code == 500
    pgjobs_inline.wait()
    assert rows(db, "SELECT user_id FROM outbox") == [(ada["id"],)]  # none for bob


def test_a_worker_killed_after_sending_sends_no_second_email(
    pgjobs_crash: Callable[..., Crash], client: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    ada = client.post("/users", json={"email": "ada@example.com"}).get_json()
    (job_id,) = rows(db, "SELECT id FROM pgjobs.jobs")[0]

    pgjobs_crash(job_id, at="sent")  # SIGKILL once the email is sent, then the retry

    assert rows(db, "SELECT state, attempt FROM pgjobs.jobs") == [("completed", 2)]
    assert rows(db, "SELECT user_id FROM outbox") == [(ada["id"],)]
