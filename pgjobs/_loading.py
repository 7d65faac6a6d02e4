"""Finding the user's :class:`~pgjobs.App` by its import path (``--app``, ``PGJOBS_APP``, the
pytest plugin's ``pgjobs_app`` option)."""

from __future__ import annotations

import pkgutil
import sys
import types
from pathlib import Path

from ._app import App
from ._errors import ConfigError


def import_app(path: str, *, source: str) -> App:
    """The App at ``path``: ``MODULE:ATTR`` (``ATTR`` may be dotted) or ``MODULE.ATTR``, found
    the way :func:`pkgutil.resolve_name` does, with the current directory importable. Errors
    name ``source``, where the path was given.

    Raises:
        ConfigError: a malformed path, a module that does not import, or not an App there.
    """
    example = "expected MODULE:ATTRIBUTE, e.g. myproject.jobs:app"
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        app = pkgutil.resolve_name(path)
    except ValueError:
        raise ConfigError(f"{source} {path!r}: {example}") from None
    except ImportError as exc:
        raise ConfigError(f"{source} {path!r}: cannot import {exc.name or path!r}: {exc}") from None
    except AttributeError as exc:
        raise ConfigError(f"{source} {path!r} is not a pgjobs.App: {exc}") from None
    if isinstance(app, types.ModuleType):
        raise ConfigError(f"{source} {path!r} is a module, not a pgjobs.App; {example}")
    if not isinstance(app, App):
        raise ConfigError(f"{source} {path!r} is not a pgjobs.App but a {type(app).__name__}")
    return app
