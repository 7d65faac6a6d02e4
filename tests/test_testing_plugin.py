"""The pytest plugin, as a project that installs pgjobs uses it: its fixtures in a small
project's tests (run by ``pytester``), its failure messages, and ``-p no:pgjobs``."""

from __future__ import annotations

import ast
import sys

import pytest

pytest_plugins = ["pytester"]

SHOP = """
import pgjobs

app = pgjobs.App()
sent = []


@app.job(name="shop.send_receipt")
def send_receipt(order_id: int) -> None:
    sent.append(order_id)


@app.job(name="shop.refund", max_attempts=2)
def refund(order_id: int) -> None:
    raise RuntimeError(f"card of order {order_id} declined")


def place_order(order_id: int) -> None:
    send_receipt.enqueue(order_id)
"""

INI = """
[pytest]
pgjobs_app = shop:app
"""


@pytest.fixture
def shop(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(shop=SHOP)
    pytester.syspathinsert()
    return pytester


def test_fake_and_real_fixtures_in_a_users_project(shop: pytest.Pytester) -> None:
    shop.makeini(INI)
    shop.makepyfile(
        test_shop="""
        import pgjobs.testing
        import shop

        def test_fake(pgjobs_fake):
            shop.place_order(7)
            pgjobs_fake.assert_enqueued(shop.send_receipt, args=[7])
            assert pgjobs_fake.drain().completed == 1
            assert shop.sent == [7]

        def test_real(pgjobs_real, pgjobs_database):
            assert str(pgjobs_real.settings.database_url) == pgjobs_database
            shop.place_order(8)
            pgjobs.testing.drain(pgjobs_real)
            assert [j.state for j in pgjobs_real.list_jobs()] == ["completed"]

        def test_each_test_has_its_own_database(pgjobs_real):
            assert pgjobs_real.list_jobs() == []
        """
    )
    result = shop.runpytest_subprocess()  # SQLAlchemy (the migration) imports once only
    result.assert_outcomes(passed=3)


LEDGER = """
import os

import psycopg

import pgjobs
from pgjobs.testing import checkpoint

app = pgjobs.App()


@app.job(name="ledger.charge")
def charge(order_id: int) -> None:
    url = os.environ.get("PGJOBS_DATABASE_URL") or str(app.settings.database_url)
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO charges VALUES (%s)", (order_id,))
    checkpoint("charged")
"""


def test_inline_clock_and_crash_fixtures_in_a_users_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(ledger=LEDGER)
    pytester.syspathinsert()
    pytester.makeini("[pytest]\npgjobs_app = ledger:app\n")
    pytester.makepyfile(
        test_ledger="""
        from datetime import timedelta

        import psycopg
        import pytest

        import ledger
        from pgjobs.testing import drain

        @pytest.fixture
        def db(pgjobs_database):
            with psycopg.connect(pgjobs_database, autocommit=True) as conn:
                conn.execute("CREATE TABLE charges (order_id int)")
                yield conn

        def charges(db):
            return [row[0] for row in db.execute("SELECT order_id FROM charges")]

        def test_inline(pgjobs_inline, db, pgjobs_database):
            ledger.charge.enqueue(1)
            assert charges(db) == [1]
            with psycopg.connect(pgjobs_database) as conn:
                ledger.charge.using(conn).enqueue(2)
                conn.rollback()
            pgjobs_inline.wait()
            assert charges(db) == [1]

        def test_clock(pgjobs_real, pgjobs_clock, db):
            ledger.charge.enqueue_in(timedelta(days=1), 3)
            drain(pgjobs_real)
            assert charges(db) == []
            pgjobs_clock.advance(timedelta(days=1))
            drain(pgjobs_real)
            assert charges(db) == [3]

        def test_crash(pgjobs_crash, db):
            job_id = ledger.charge.enqueue(4)
            pgjobs_crash(job_id, at="charged")
            assert charges(db) == [4, 4]  # not idempotent: charged again by the retry
        """
    )
    result = pytester.runpytest_subprocess()  # SQLAlchemy (the migration) imports once only
    result.assert_outcomes(passed=3)


def test_failures_say_what_happened(shop: pytest.Pytester) -> None:
    shop.makeini(INI)
    shop.makepyfile(
        test_shop="""
        import shop

        def test_wrong_order(pgjobs_fake):
            shop.place_order(7)
            pgjobs_fake.assert_enqueued(shop.send_receipt, args=[8])

        def test_declined(pgjobs_fake):
            shop.refund.enqueue(9)
            pgjobs_fake.drain()
        """
    )
    result = shop.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*expected shop.send_receipt(args=[[]8[]]) to be enqueued; enqueued:*",
            "*<shop.send_receipt(7) id=1 queue='default' state=available>*",
            "*JobsFailed: 1 job(s) discarded in drain():*",
            "*after 2 attempt(s): builtins.RuntimeError: card of order 9 declined*",
        ]
    )


def test_without_the_app_the_fixtures_say_how_to_name_it(shop: pytest.Pytester) -> None:
    shop.makepyfile(test_shop="def test_it(pgjobs_fake): pass")
    result = shop.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(['*set pgjobs_app = "myproject.jobs:app"*'])


def test_a_conftest_may_provide_the_app(shop: pytest.Pytester) -> None:
    shop.makeconftest(
        """
        import pytest
        import shop

        @pytest.fixture
        def pgjobs_app():
            return shop.app
        """
    )
    shop.makepyfile(
        test_shop="""
        import shop

        def test_it(pgjobs_fake):
            shop.place_order(1)
            assert len(pgjobs_fake.enqueued_jobs()) == 1
        """
    )
    shop.runpytest().assert_outcomes(passed=1)


def test_no_pgjobs_disables_the_plugin(shop: pytest.Pytester) -> None:
    shop.makeini(INI)
    shop.makepyfile(test_shop="def test_it(pgjobs_fake): pass")
    result = shop.runpytest("-p", "no:pgjobs")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'pgjobs_fake' not found*"])


def test_loading_the_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    """Beyond pgjobs itself and pytest: no SQLAlchemy, no testcontainers, Docker or pgserver."""
    result = pytester.run(
        sys.executable,
        "-c",
        "import sys, pgjobs; before = set(sys.modules); import pgjobs.testing.plugin; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))",
    )
    assert result.ret == 0, result.stderr.str()
    loaded = set(ast.literal_eval(result.stdout.lines[-1]))
    assert not loaded & {"sqlalchemy", "testcontainers", "docker", "pgserver"}, loaded
    assert "pytest" in loaded
