"""The PostgreSQL server that tests run on: ``PGJOBS_TEST_DSN`` when set, else a testcontainers
PostgreSQL where a Docker engine answers, else the embedded ``pgserver`` (``pgjobs[embedded]``) in
a temporary directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from .._errors import ConfigError

DSN_VARIABLE = "PGJOBS_TEST_DSN"
"""The environment variable naming the test server (a ``postgresql://`` URL, a superuser's)."""


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The URL of a PostgreSQL server for tests (see the module's text), stopped at the end
    if it was started here."""
    if os.environ.get(DSN_VARIABLE):
        yield os.environ[DSN_VARIABLE]
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
    else:
        try:
            import pgserver
        except ImportError:
            raise ConfigError(
                f"no PostgreSQL for tests: set {DSN_VARIABLE}=postgresql://..., start Docker "
                "(with testcontainers installed), or pip install 'pgjobs[embedded]'"
            ) from None
        with tempfile.TemporaryDirectory(prefix="pgjobs-test-") as directory:
            embedded = pgserver.get_server(directory, cleanup_mode="delete")  # type: ignore[attr-defined]
            yield embedded.get_uri()
            embedded.cleanup()


def _docker_answers() -> bool:
    """Whether a Docker engine answers and testcontainers is installed."""
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    try:
        import docker
        import testcontainers  # noqa: F401
    except ImportError:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=2)
        except Exception:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()
