"""One settings object, read from layered sources.

Lowest first: defaults < ``[tool.pgjobs]`` in ``pyproject.toml`` or ``pgjobs.toml`` < ``PGJOBS_*``
environment variables < CLI flags < explicit arguments. This is the only module that reads the
environment. Each setting has one spelling everywhere: ``poll_interval`` ↔
``PGJOBS_POLL_INTERVAL`` ↔ ``--poll-interval``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError

DAY = 86400.0
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": DAY, None: 1}

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_NOT_OURS = frozenset({"public", "information_schema"})
"""Schemas pgjobs must not take over: the application's default one and PostgreSQL's own (as is
every ``pg_*`` name)."""

_PASSWORD_PAIR = re.compile(
    r"(?P<key>\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^&\s]*(?:\s+(?!\w+\s*=)[^&\s]+)*)",
    re.IGNORECASE,
)
"""A ``password=`` (or ``sslpassword=``) value in a URL's query or a key/value DSN, quoted or not;
unquoted, it runs up to the next ``key=`` so that a value with a stray space is hidden whole."""
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""What a queue may be called: no commas or colons, which the ``queues`` setting uses."""


@dataclass(frozen=True)
class QueueSpec:
    """Which queues a worker takes jobs from, and how it orders them.

    ``weighted``: each claim shuffles the queues at random, a queue with weight 3 coming first
    three times as often as one with weight 1 (Sidekiq's weighted mode). Otherwise strict: always
    in the given order.
    """

    names: tuple[str, ...]
    weights: tuple[int, ...]
    weighted: bool

    @classmethod
    def parse(cls, text: str) -> QueueSpec:
        """Parse ``"critical:3,default:1"`` (weighted) or ``"critical,default"`` (strict)."""
        names: list[str] = []
        weights: list[int] = []
        for part in (p.strip() for p in text.split(",")):
            name, _, weight = part.partition(":")
            if not QUEUE_NAME.fullmatch(name):
                raise ConfigError(f"queues: {part!r} is not a queue name (letters, digits, _.-)")
            if name in names:
                raise ConfigError(f"queues: {name!r} is listed twice")
            if weight and not (weight.isdigit() and int(weight) > 0):
                raise ConfigError(f"queues: weight of {name!r} must be a positive integer")
            names.append(name)
            weights.append(int(weight) if weight else 0)
        if any(weights) and not all(weights):
            raise ConfigError("queues: give every queue a weight (critical:3,default:1) or none")
        return cls(tuple(names), tuple(w or 1 for w in weights), weighted=any(weights))

    @classmethod
    def evenly(cls, names: tuple[str, ...]) -> QueueSpec:
        """``names`` at equal weights: each claim orders them at random, each as often first
        (strict for a single queue)."""
        return cls(names, (1,) * len(names), weighted=len(names) > 1)

    def __str__(self) -> str:
        if self.weighted:
            return ",".join(f"{n}:{w}" for n, w in zip(self.names, self.weights, strict=True))
        return ",".join(self.names)


@dataclass(frozen=True)
class Settings:
    """Every pgjobs setting with its default. Build with :func:`load_settings`."""

    database_url: str | None = None
    app: str | None = None
    schema: str = "pgjobs"
    queues: str = "default"
    concurrency: int = 10
    processes: int = 1
    poll_interval: float = 5.0
    shutdown_timeout: float = 25.0
    poll_only: bool = False
    listen_database_url: str | None = None
    prepared_statements: bool = True
    connect_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    lease_timeout: float = 30.0
    retain_completed: float = DAY
    retain_cancelled: float = 7 * DAY
    retain_discarded: float = 30 * DAY
    result_retention: float | None = None
    """Seconds a completed job's result is kept after it finished; ``None``: as long as the job."""
    vacuum_threshold: int = 10_000
    log_level: str = "INFO"
    log_format: str = "text"
    web_user: str | None = None
    web_password: str | None = field(default=None, repr=False)
    web_token: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _IDENTIFIER.fullmatch(self.schema):
            raise ConfigError(
                f"schema: {self.schema!r} must be a lower-case SQL identifier such as 'pgjobs'"
            )
        if self.schema in _NOT_OURS or self.schema.startswith("pg_"):
            raise ConfigError(
                f"schema: {self.schema!r} belongs to PostgreSQL or to the application; give "
                "pgjobs a schema of its own, such as 'pgjobs'"
            )
        QueueSpec.parse(self.queues)
        if self.concurrency < 1:
            raise ConfigError("concurrency: must be at least 1")
        if self.processes < 1:
            raise ConfigError("processes: must be at least 1")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format: {self.log_format!r} is not text or json")
        if self.vacuum_threshold < 0:
            raise ConfigError("vacuum_threshold: must be 0 (off) or a number of dead rows")
        for name in _DURATIONS:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be a positive number of seconds")
        if self.lease_timeout < 3 * self.heartbeat_interval:
            raise ConfigError(
                f"lease_timeout: must be at least 3 heartbeat intervals "
                f"({3 * self.heartbeat_interval:g} s), so one late beat never loses a worker"
            )

    def __repr__(self) -> str:
        shown = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.repr)
        return "Settings({})".format(
            ", ".join(
                f"{name}={mask_password(value) if name in _URLS and value else value!r}"
                for name, value in shown
            )
        )

    @property
    def queue_spec(self) -> QueueSpec:
        return QueueSpec.parse(self.queues)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "extra"}
_DURATIONS = tuple(name for name, f in _FIELDS.items() if f.type in ("float", "float | None"))
_URLS = ("database_url", "listen_database_url")


def mask_password(url: str) -> str:
    """``url`` (a URL or key/value DSN) with every password in it replaced by ``***``.

    Hides ``user:password@`` (up to the last ``@``, as a password with an unescaped ``@`` would
    run), ``password=`` and ``sslpassword=`` values. Meant for anything printed or logged: when
    the text is malformed, it errs on the side of hiding more.
    """
    scheme, sep, rest = url.partition("://")
    before, at, after = (rest if sep else url).rpartition("@")
    if at:
        cut = 0 if sep else before.rfind(" ") + 1  # no scheme: the last word is the user-info
        user, colon, _ = before[cut:].partition(":")
        if colon:
            before = f"{before[:cut]}{user}:***"
        masked = f"{before}@{after}"
        url = f"{scheme}://{masked}" if sep else masked
    return _PASSWORD_PAIR.sub(lambda m: f"{m['key']}***", url)


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"1.5"``, ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"`` or ``"7d"``.

    Raises:
        ValueError: anything else.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 30, 30s, 5m, 2h or 7d")
    return float(match[1]) * _UNITS[match[2]]


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    directory: Path | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge every source into one :class:`Settings`; ``overrides`` (flags, arguments) win.

    ``None`` values in ``overrides`` mean "not given" and do not hide lower sources.
    ``defaults`` replace the built-in defaults, below every source (an app's own queues).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = dict(defaults or {})
    values.update(_from_files(directory or Path.cwd()))
    values.update(_from_environment(env))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    return Settings(**{name: _coerce(name, value) for name, value in values.items()})


def _from_files(directory: Path) -> dict[str, Any]:
    for candidate in (directory / "pgjobs.toml", directory / "pyproject.toml"):
        if not candidate.is_file():
            continue
        try:
            data = tomllib.loads(candidate.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{candidate}: not valid TOML: {exc}") from None
        section = data if candidate.name == "pgjobs.toml" else data.get("tool", {}).get("pgjobs")
        if section is not None:
            return {k.replace("-", "_"): v for k, v in section.items()}
    return {}


def _from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if env.get("DATABASE_URL"):
        values["database_url"] = env["DATABASE_URL"]
    for name in _FIELDS:
        raw = env.get(f"PGJOBS_{name.upper()}")
        if raw:
            values[name] = raw
    return values


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "bool" and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                raise ValueError(value)
            return lowered in {"1", "true", "yes", "on"}
        if kind == "int":
            return int(value)
        if kind in ("float", "float | None"):
            return parse_duration(value) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {kind}") from None
    return value
