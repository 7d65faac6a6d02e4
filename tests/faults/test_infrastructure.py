"""The fault-test tools themselves: a cluster that restarts and crashes, the proxy, pgbouncer.

Fault tests are only as trustworthy as these pieces, so each check here could fail.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

import psycopg
import pytest

from tests.faults.cluster import Cluster
from tests.faults.pgbouncer import PgBouncer
from tests.faults.proxy import FaultProxy
from tests.helpers import eventually

pytestmark = pytest.mark.faults


def count_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM kept").fetchone()
    assert row is not None
    count: int = row[0]
    return count


def backends_named(cluster: Cluster, application_name: str) -> int:
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [application_name],
        ).fetchone()
    assert row is not None
    count: int = row[0]
    return count


def test_cluster_restart_keeps_data_and_port(cluster: Cluster) -> None:
    url = cluster.url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1)")

    cluster.restart()

    assert cluster.url == url
    assert count_rows(url) == 1


def test_cluster_crash_then_start_recovers_committed_rows(cluster: Cluster) -> None:
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (1), (2)")
        cluster.stop("immediate")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.url, connect_timeout=2).close()

    cluster.start()

    assert count_rows(cluster.url) == 2
    assert "automatic recovery in progress" in cluster.log.read_text()


def test_cluster_create_database(cluster: Cluster) -> None:
    cluster.create_database("made_here")
    with psycopg.connect(cluster.url_for("made_here")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("made_here",)


def test_terminate_backends_kills_only_matching_connections(cluster: Cluster) -> None:
    with (
        psycopg.connect(cluster.url, autocommit=True, application_name="w:1:claim") as victim,
        psycopg.connect(cluster.url, autocommit=True, application_name="w:1:ack") as bystander,
    ):
        assert cluster.terminate_backends("%:claim") == 1

        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        assert cluster.terminate_backends("%:claim") == 0


def test_proxy_blackhole_stalls_matching_connections_only(
    cluster: Cluster, fault_proxy: FaultProxy
) -> None:
    url = fault_proxy.url_for(cluster.url)
    assert f"127.0.0.1:{fault_proxy.port}" in url
    assert "sslmode=disable" in url
    with (
        psycopg.connect(url, autocommit=True, application_name="w:1:claim") as cut,
        psycopg.connect(url, autocommit=True, application_name="w:1:ack") as kept,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        assert cut.execute("SELECT current_setting('application_name')").fetchone() == (
            "w:1:claim",
        )
        assert ("w:1:claim", "open") in fault_proxy.connections()

        assert fault_proxy.blackhole(":claim") == 1
        stalled: concurrent.futures.Future[Any] = pool.submit(
            lambda: cut.execute("SELECT 1").fetchone()
        )
        with pytest.raises(concurrent.futures.TimeoutError):
            stalled.result(timeout=1)
        assert kept.execute("SELECT 1").fetchone() == (1,)
        assert ("w:1:claim", "blackholed") in fault_proxy.connections()

        # New connections with a matching name stall too, until heal().
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, application_name="w:2:claim", connect_timeout=2).close()
        fault_proxy.heal()
        with psycopg.connect(url, application_name="w:3:claim") as healed:
            assert healed.execute("SELECT 1").fetchone() == (1,)
        assert not stalled.done()  # healing does not revive a blackholed link

        # Both blackholed links (the query's and the connect's) stay dead until reset.
        assert fault_proxy.reset(lambda name: name in {"w:1:claim", "w:2:claim"}) == 2
        with pytest.raises(psycopg.OperationalError):
            stalled.result(timeout=5)


def test_proxy_reset_breaks_matching_connection(cluster: Cluster, fault_proxy: FaultProxy) -> None:
    url = fault_proxy.url_for(cluster.url)
    with (
        psycopg.connect(url, autocommit=True, application_name="w:1:listen") as cut,
        psycopg.connect(url, autocommit=True, application_name="w:1:ack") as kept,
    ):
        assert backends_named(cluster, "w:1:listen") == 1

        assert fault_proxy.reset(lambda name: name == "w:1:listen") == 1

        with pytest.raises(psycopg.OperationalError):
            cut.execute("SELECT 1")
        assert kept.execute("SELECT 1").fetchone() == (1,)
        assert ("w:1:listen", "reset") in fault_proxy.connections()
        eventually(lambda: backends_named(cluster, "w:1:listen") == 0, timeout=5)


def test_pgbouncer_transaction_pooling_shares_sessions(
    cluster: Cluster, pgbouncer: PgBouncer
) -> None:
    url = pgbouncer.url_for("postgres")
    with (
        psycopg.connect(url, prepare_threshold=None, autocommit=True) as a,
        psycopg.connect(url, prepare_threshold=None, autocommit=True) as b,
    ):
        with a.transaction():
            a.execute("CREATE TABLE kept (x int)")
            a.execute("INSERT INTO kept VALUES (1)")
        assert count_rows(cluster.url) == 1

        # Directly, the second session cannot take a lock the first one holds ...
        with (
            psycopg.connect(cluster.url, autocommit=True) as direct_a,
            psycopg.connect(cluster.url, autocommit=True) as direct_b,
        ):
            lock = "SELECT pg_try_advisory_lock(42)"
            assert direct_a.execute(lock).fetchone() == (True,)
            assert direct_b.execute(lock).fetchone() == (False,)
            # Unlock now: a closed session's backend may linger, lock held, for a moment.
            assert direct_a.execute("SELECT pg_advisory_unlock(42)").fetchone() == (True,)

        # ... but through a transaction pooler both clients run on the same server session.
        assert a.execute(lock).fetchone() == (True,)
        assert b.execute(lock).fetchone() == (True,)
