"""Settings: layered sources and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgjobs import App, ConfigError, load_settings
from pgjobs._settings import QueueSpec, mask_password


def test_layers_lowest_first(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pgjobs]\nconcurrency = 3\nqueues = "a,b"\npoll-interval = 7\nschema = "from_file"\n'
    )
    env = {"PGJOBS_CONCURRENCY": "5", "DATABASE_URL": "postgresql://fallback/db"}
    settings = load_settings(
        {"schema": "from_flag", "queues": None}, directory=tmp_path, environ=env
    )
    assert settings.concurrency == 5  # env over file
    assert settings.queues == "a,b"  # None override does not hide the file
    assert settings.poll_interval == 7.0
    assert settings.schema == "from_flag"  # flag over file
    assert settings.database_url == "postgresql://fallback/db"
    env["PGJOBS_DATABASE_URL"] = "postgresql://preferred/db"
    assert (
        load_settings(directory=tmp_path, environ=env).database_url == "postgresql://preferred/db"
    )


def test_pgjobs_toml_wins_over_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pgjobs]\nconcurrency = 3\n")
    (tmp_path / "pgjobs.toml").write_text("concurrency = 4\npoll_only = true\n")
    settings = load_settings(directory=tmp_path, environ={})
    assert (settings.concurrency, settings.poll_only) == (4, True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schema": "Bad-Schema"}, "schema"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": "many"}, "concurrency"),
        ({"poll_interval": -1}, "poll_interval"),
        ({"poll_only": "maybe"}, "poll_only"),
        ({"queues": "a:3,b"}, "every queue a weight"),
        ({"queues": "a,a"}, "twice"),
        ({"queues": "a:zero"}, "positive integer"),
        ({"queues": "bad queue"}, "not a queue name"),
        ({"colour": "blue"}, "unknown setting"),
        ({"lease_timeout": "5s", "heartbeat_interval": "2s"}, "at least 3 heartbeat"),
        ({"retain_completed": "a week"}, "not a valid float"),
        ({"processes": 0}, "processes"),
    ],
)
def test_bad_settings_are_refused(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides, directory=tmp_path, environ={})


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "pgjobs.toml").write_text("concurrency = \n")
    with pytest.raises(ConfigError, match=r"pgjobs\.toml"):
        load_settings(directory=tmp_path, environ={})


def test_queue_specs() -> None:
    strict = QueueSpec.parse("critical, default")
    assert (strict.names, strict.weighted, str(strict)) == (
        ("critical", "default"),
        False,
        "critical,default",
    )
    weighted = QueueSpec.parse("critical:3,default:1")
    assert (weighted.weights, weighted.weighted, str(weighted)) == (
        (3, 1),
        True,
        "critical:3,default:1",
    )


def test_durations_take_units_everywhere(tmp_path: Path) -> None:
    (tmp_path / "pgjobs.toml").write_text('retain_discarded = "90d"\nheartbeat_interval = 1\n')
    env = {"PGJOBS_LEASE_TIMEOUT": "45s", "PGJOBS_RETAIN_COMPLETED": "12h"}
    settings = load_settings(
        {"poll_interval": "250ms", "shutdown_timeout": "1.5m"}, directory=tmp_path, environ=env
    )
    assert (
        settings.retain_discarded,
        settings.heartbeat_interval,
        settings.lease_timeout,
        settings.retain_completed,
        settings.poll_interval,
        settings.shutdown_timeout,
    ) == (90 * 86400, 1.0, 45.0, 12 * 3600, 0.25, 90.0)


@pytest.mark.parametrize(
    "schema", ["public", "pg_catalog", "information_schema", "pg_toast", "pg_jobs"]
)
def test_schemas_that_are_not_pgjobs_own_are_refused(tmp_path: Path, schema: str) -> None:
    with pytest.raises(ConfigError, match=f"schema: '{schema}'.*a schema of its own"):
        load_settings({"schema": schema}, directory=tmp_path, environ={})


PASSWORD = "s3cr3t-Pw"

MASKED = [
    (
        f"postgresql://bob:{PASSWORD}@db.internal:5432/app",
        "postgresql://bob:***@db.internal:5432/app",
    ),
    (f"postgresql+psycopg://bob:{PASSWORD}@db/app", "postgresql+psycopg://bob:***@db/app"),
    (f"postgresql://bob:p@ss{PASSWORD}@db/app", "postgresql://bob:***@db/app"),
    (
        f"postgresql://bob@db/app?password={PASSWORD}&sslmode=require",
        "postgresql://bob@db/app?password=***&sslmode=require",
    ),
    (f"host=db password={PASSWORD} dbname=app", "host=db password=*** dbname=app"),
    (f"host=db password='{PASSWORD} x' dbname=app", "host=db password=*** dbname=app"),
    (f"host=db password={PASSWORD} x dbname=app", "host=db password=*** dbname=app"),
    (f"host=db sslpassword={PASSWORD}", "host=db sslpassword=***"),
    (f"postgresql//bob:{PASSWORD}@db/app", "postgresql//bob:***@db/app"),
    ("postgresql://bob@db:5432/app", "postgresql://bob@db:5432/app"),
    ("host=db dbname=app", "host=db dbname=app"),
]


@pytest.mark.parametrize(("url", "masked"), MASKED)
def test_mask_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked


def test_settings_repr_hides_passwords(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "database_url": f"postgresql://bob:{PASSWORD}@db.internal/app",
            "listen_database_url": f"host=direct password={PASSWORD}",
        },
        directory=tmp_path,
        environ={},
    )
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert PASSWORD not in text
        assert "database_url='postgresql://bob:***@db.internal/app'" in text
        assert "listen_database_url='host=direct password=***'" in text
        assert "schema='pgjobs'" in text
    assert settings.database_url == f"postgresql://bob:{PASSWORD}@db.internal/app"


def test_an_apps_workers_serve_every_queue_it_declares_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGJOBS_QUEUES", raising=False)
    plain = App()

    @plain.job(name="plain")
    def job() -> None: ...

    assert plain.settings.queue_spec == QueueSpec(("default",), (1,), weighted=False)

    app = App()
    app.queue("imports")
    spec = app.settings.queue_spec
    assert spec == QueueSpec(("default", "imports"), (1, 1), weighted=True)

    @app.job(name="mail", queue="mailers")
    def mail() -> None: ...

    # declared after the settings were first read: they follow
    assert app.settings.queue_spec.names == ("default", "imports", "mailers")
    assert set(app.settings.queue_spec.weights) == {1}  # every queue as often first

    monkeypatch.setenv("PGJOBS_QUEUES", "mailers")
    app.configure()
    assert app.settings.queues == "mailers"  # a source that names queues wins
    assert App(queues="critical,default").settings.queues == "critical,default"


def test_an_app_given_none_takes_the_setting_from_the_other_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``App(database_url=os.environ.get("DATABASE_URL"))`` with the variable unset: ``None`` is
    "not given", as everywhere in the settings."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("PGJOBS_DATABASE_URL", "postgresql://from-env/db")
    app = App(database_url=None, concurrency=None)
    assert (app.settings.database_url, app.settings.concurrency) == ("postgresql://from-env/db", 10)
    app.configure(database_url="postgresql://from-flag/db")  # the CLI flag, or embedded server
    assert app.settings.database_url == "postgresql://from-flag/db"
    assert App(database_url="postgresql://explicit/db").settings.database_url == (
        "postgresql://explicit/db"
    )
