"""How signing in is guarded, decided without I/O: which secrets are too weak to take, and how
long a client that failed to sign in must wait before its next try is checked.

A token needs :data:`MIN_TOKEN` characters, a password :data:`MIN_PASSWORD`, each at least
:data:`MIN_DIFFERENT` different ones and no white space at either end (:func:`weakness`).

A client (an address) may fail :data:`ALLOWED` times; after that each failure makes it wait
before the next check, :data:`FIRST_WAIT` seconds and twice as long each time, up to
:data:`LONGEST_WAIT`. A success, or :data:`FORGET_AFTER` seconds without a failure, forgets it.
At most :data:`CLIENTS` clients are remembered: past that, the one whose last failure is oldest
is forgotten first, so that a flood of addresses costs bounded memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MIN_TOKEN = 16
"""Characters of a token, at least."""

MIN_PASSWORD = 8
"""Characters of a basic-auth password, at least."""

MIN_DIFFERENT = 5
"""Different characters in a token or password, at least."""

GOOD_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'  # noqa: S105 (advice)
"""How to make a good token or password."""


def weakness(secret: str, minimum: int) -> str | None:
    """Why ``secret`` is too weak to guard the dashboard (``None``: it is not): shorter than
    ``minimum`` characters, fewer than :data:`MIN_DIFFERENT` different ones, or white space at
    either end (which a copy and paste adds or drops unseen). The answer never quotes it."""
    if secret != secret.strip():
        return "it begins or ends with a space or another blank"
    if len(secret) < minimum:
        return f"it is shorter than {minimum} characters"
    if len(set(secret)) < MIN_DIFFERENT:
        return f"it has fewer than {MIN_DIFFERENT} different characters"
    return None


ALLOWED = 5
"""Failed sign-ins in a row that cost no wait."""

FIRST_WAIT = 30.0
"""Seconds of the first wait; each further failure doubles it."""

LONGEST_WAIT = 900.0
"""The longest wait: 15 minutes."""

FORGET_AFTER = 3600.0
"""Seconds after its last failure that a client's failures are forgotten."""

CLIENTS = 10_000
"""Clients remembered at most."""


@dataclass
class _Failures:
    count: int
    last: float


class SignInThrottle:
    """The failed sign-ins of each client, and how long it must wait.

    Safe to share between threads; ``clock`` (monotonic seconds) is for tests.
    """

    def __init__(
        self, *, clients: int = CLIENTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clients = clients
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()  # the latest failure last

    def wait(self, client: str) -> float:
        """Seconds before ``client``'s next sign-in may be checked (0: now)."""
        with self._lock:
            failures = self._current(client)
            if failures is None or failures.count < ALLOWED:
                return 0.0
            doublings = min(failures.count - ALLOWED, 10)
            wait = min(FIRST_WAIT * 2.0**doublings, LONGEST_WAIT)
            return max(failures.last + wait - self._clock(), 0.0)

    def failed(self, client: str) -> int:
        """Count a failed sign-in of ``client``; its failures in a row so far."""
        with self._lock:
            failures = self._current(client) or _Failures(0, 0.0)
            failures.count += 1
            failures.last = self._clock()
            self._failures[client] = failures
            self._failures.move_to_end(client)
            while len(self._failures) > self._clients:
                self._failures.popitem(last=False)
            return failures.count

    def succeeded(self, client: str) -> None:
        """Forget ``client``'s failures."""
        with self._lock:
            self._failures.pop(client, None)

    def __len__(self) -> int:
        """Clients remembered."""
        return len(self._failures)

    def _current(self, client: str) -> _Failures | None:
        failures = self._failures.get(client)
        if failures is not None and self._clock() - failures.last >= FORGET_AFTER:
            del self._failures[client]
            return None
        return failures
