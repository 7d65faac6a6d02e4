"""The dashboard's pure decisions: which scanned jobs make a page and where the next one starts,
what a cursor may hold, how the runs-per-minute graph is drawn, which host names and listening
addresses are loopback, which tokens and passwords are too weak to take, how long a client
that failed to sign in waits, and what redaction leaves of a job's errors."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgjobs import ConfigError
from pgjobs.web import BasicAuth, TokenAuth
from pgjobs.web._graph import HEIGHT, MINUTES, graph
from pgjobs.web._listing import (
    PAGE,
    SCAN,
    BadRequest,
    Listing,
    decode_cursor,
    encode_cursor,
    listing,
    page,
)
from pgjobs.web._loopback import is_loopback_address, is_loopback_host
from pgjobs.web._redaction import MASK, hidden, redacted
from pgjobs.web._sign_in import ALLOWED, FIRST_WAIT, FORGET_AFTER, LONGEST_WAIT, SignInThrottle

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def scanned(ids: range, hits: set[int] | None = None) -> list[tuple[object, ...]]:
    """Scan rows of the running order: ``(attempted_at, id, hit)``."""
    return [(T0 + timedelta(seconds=i), i, hits is None or i in hits) for i in ids]


def test_an_unfiltered_page_shows_its_jobs_and_starts_the_next_after_the_last() -> None:
    running = Listing("running")
    full = page(scanned(range(PAGE + 1)), running)
    assert full.ids == list(range(PAGE)) and full.next == (
        T0 + timedelta(seconds=PAGE - 1),
        PAGE - 1,
    )
    last = page(scanned(range(7)), running)
    assert last.ids == list(range(7)) and last.next is None


def test_a_filtered_page_links_on_from_where_its_scan_stopped() -> None:
    filtered = Listing("running", name="send")
    sparse = page(scanned(range(SCAN), hits={5, 1500}), filtered)
    assert sparse.ids == [5, 1500]
    assert sparse.next == (T0 + timedelta(seconds=SCAN - 1), SCAN - 1)  # look further
    dense = page(scanned(range(SCAN), hits=set(range(0, SCAN, 2))), filtered)
    assert dense.ids == list(range(0, 2 * PAGE, 2))
    assert dense.next == (T0 + timedelta(seconds=2 * PAGE - 2), 2 * PAGE - 2)
    end = page(scanned(range(30), hits={3}), filtered)
    assert end.ids == [3] and end.next is None


def test_a_cursor_round_trips_and_nothing_else_is_taken() -> None:
    keys = ("mailers", -5, T0, 2**63 - 1)
    types = (str, int, datetime, int)
    assert decode_cursor(encode_cursor(keys), types) == keys
    for bad in ("", "[", "{}", "[1,2,3]", '["a b",0,"2026-12-04T12:00:00+00:00",1]',
                '["q",true,"2026-12-04T12:00:00+00:00",1]', '["q",0,"2026-12-04T12:00:00",1]',
                '["q",0,"noon",1]', f'["q",0,"2026-12-04T12:00:00+00:00",{2**63}]',
                '["q",1.5,"2026-12-04T12:00:00+00:00",1]'):  # fmt: skip
        with pytest.raises(BadRequest, match="damaged"):
            decode_cursor(bad, types)


def test_a_listing_checks_every_field_of_the_query() -> None:
    assert listing({}) == Listing("available")
    asked = listing({"state": "discarded", "queue": "mail.x-1", "name": "a.b", "search": "7"})
    assert asked.filtered and asked.query(None) == {
        "state": "discarded", "queue": "mail.x-1", "name": "a.b", "search": "7",
    }  # fmt: skip
    assert listing({"state": "completed", "queue": "", "name": "", "search": ""}).filtered is False
    for query, message in (
        ({"state": "dead"}, "state must be one of"),
        ({"queue": "a/b"}, "not a queue name"),
        ({"name": "x" * 256}, "at most 255"),
        ({"search": "x" * 201}, "at most 200"),
        ({"search": "\x00"}, "at most 200"),
    ):
        with pytest.raises(BadRequest, match=message):
            listing(query)
    with pytest.raises(BadRequest, match="redacted"):
        listing({"search": "token"}, searchable=False)


def test_the_graph_draws_the_last_hour_and_drops_older_minutes() -> None:
    now = T0 + timedelta(minutes=30, seconds=20)
    rows = [(T0 + timedelta(minutes=30), 10, 2), (T0 + timedelta(minutes=29), 4, 0),
            (T0 - timedelta(hours=2), 999, 999)]  # fmt: skip
    drawn = graph(rows, now)
    assert drawn.peak == 10 and drawn.completed_total == 14 and drawn.failed_total == 2
    completed = [tuple(map(float, p.split(","))) for p in drawn.completed.split()]
    assert len(completed) == MINUTES
    assert completed[-1][1] == 0.0 and completed[-2][1] == HEIGHT - 4 * HEIGHT / 10
    assert all(y == HEIGHT for _, y in completed[:-2])
    empty = graph([], now)
    assert empty.peak == 1 and set(empty.failed.split()) != set()


def test_a_count_at_the_cap_becomes_the_planners_estimate() -> None:
    from pgjobs.web._counts import CAP, counted, plan_rows

    assert str(counted(CAP - 1)) == f"{CAP - 1:,}" and not counted(CAP - 1).estimated
    assert str(counted(CAP, 123_456.7)) == "≈123,457"
    assert counted(CAP, 17.0).jobs == CAP  # stale statistics: at least what was counted
    assert plan_rows([{"Plan": {"Plan Rows": 42.0}}]) == 42.0
    assert not counted(0)


LOOPBACK_HOSTS = ("127.0.0.1", "127.0.0.1:8188", "127.255.0.9:1", "localhost", "localhost:8188",
                  "[::1]", "[::1]:8188", "[0:0:0:0:0:0:0:1]:80")  # fmt: skip
"""Host headers of requests sent to loopback by an address or by ``localhost``."""

FOREIGN_HOSTS = (
    "127.0.0.1.nip.io", "127.0.0.1.nip.io:8188", "127.attacker.example", "127.attacker.example:80",
    "localhost.evil.example", "localhost.", "localhost.:8188", "127.0.0.1.", "0x7f.1", "2130706433",
    "127.1", "127.000.0.1", "[::ffff:127.0.0.1]", "[::1%lo]", "::1", "", ":8188", "user@127.0.0.1",
    "user:pw@localhost:8188", "127.0.0.1:", "127.0.0.1:80:80", "127.0.0.1:8o", "localhost:123456",
    "[::1]x", "[::1", "LOCALHOST.evil", "10.0.0.1", "0.0.0.0", "[::]", "127.0.0.1 ", " localhost",
    "127.0.0.1/x", "jobs.example.org",
)  # fmt: skip
"""Host headers that a name of another site's (DNS rebinding) or a malformed header may bring."""


def test_only_loopback_addresses_and_localhost_are_loopback_host_names() -> None:
    for host in LOOPBACK_HOSTS:
        assert is_loopback_host(host), host
    for host in FOREIGN_HOSTS:
        assert not is_loopback_host(host), host


def test_a_listening_address_is_loopback_only_as_an_address_of_127_8_or_1_or_localhost() -> None:
    for address in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback_address(address), address
    for address in ("0.0.0.0", "::", "", "127.1", "127.0.0.1.nip.io", "localhost.", "10.1.2.3",
                    "127.attacker.example", "::ffff:127.0.0.1", "::1%lo",
                    "127.0.0.1:80"):  # fmt: skip
        assert not is_loopback_address(address), address


def test_a_weak_token_or_password_is_refused_with_what_to_use_and_never_shown() -> None:
    for token, problem in (
        (" " * 16, "space"),
        ("\t" * 40, "space"),
        ("x" * 64, "fewer than 5 different"),
        ("abcdabcdabcdabcdabcd", "fewer than 5 different"),
        (" " + secrets.token_urlsafe(32), "space"),
        (secrets.token_urlsafe(32) + "\n", "space"),
        ("0123456789abcde", "shorter than 16"),
    ):
        with pytest.raises(ConfigError) as refused:
            TokenAuth(token)
        message = str(refused.value)
        assert "PGJOBS_WEB_TOKEN" in message and problem in message, repr(token)
        assert "secrets.token_urlsafe(32)" in message
        assert not token.strip() or token.strip() not in message
        assert "\n" not in message
    for password, problem in (
        ("", "shorter than 8"),
        (" " * 12, "space"),
        ("aaaabbbbaaaabbbb", "fewer than 5 different"),
        ("s3cret-pass ", "space"),
        ("Pa55wd!", "shorter than 8"),
    ):
        with pytest.raises(ConfigError) as refused:
            BasicAuth("ops", password)
        message = str(refused.value)
        assert "PGJOBS_WEB_PASSWORD" in message and problem in message, repr(password)
        assert not password.strip() or password.strip() not in message
    for token in ("a-long-random-token-0123456789", secrets.token_urlsafe(32), "0123456789abcdef"):
        assert TokenAuth(token).accepts(token)
    assert BasicAuth("ops", "s3cret-pass").user == "ops"


class Clock:
    """A monotonic clock that a test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_sign_ins_make_their_client_wait_longer_each_time() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock=clock)
    for n in range(1, ALLOWED):
        assert throttle.failed("10.0.0.1") == n and throttle.wait("10.0.0.1") == 0
    throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == FIRST_WAIT
    assert throttle.wait("10.0.0.2") == 0  # another client is not slowed
    clock.now += FIRST_WAIT - 1
    assert throttle.wait("10.0.0.1") == 1
    waits = []
    for _ in range(8):
        clock.now += throttle.wait("10.0.0.1")
        throttle.failed("10.0.0.1")
        waits.append(throttle.wait("10.0.0.1"))
    assert waits == [60, 120, 240, 480, LONGEST_WAIT, LONGEST_WAIT, LONGEST_WAIT, LONGEST_WAIT]
    throttle.succeeded("10.0.0.1")
    assert throttle.wait("10.0.0.1") == 0 and throttle.failed("10.0.0.1") == 1


def test_failures_are_forgotten_an_hour_on_and_few_clients_are_remembered() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock=clock, clients=100)
    for _ in range(ALLOWED):
        throttle.failed("10.0.0.1")
    clock.now += FORGET_AFTER
    assert throttle.wait("10.0.0.1") == 0 and throttle.failed("10.0.0.1") == 1
    for i in range(1000):
        throttle.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    assert throttle.failed("10.1.3.231") == 2  # the latest are kept, the oldest forgotten
    assert throttle.failed("10.1.0.0") == 1


def test_values_hidden_from_the_arguments_are_blanked_out_of_the_jobs_texts() -> None:
    def redact(name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        return ["***"] * len(args), {**kwargs, "card": {"number": "****", "pin": 0}}

    job = {
        "name": "charge",
        "args": ["tok-4242-secret", 4111111111111111, "ada"],
        "kwargs": {"card": {"number": "5555-4444", "pin": 123}, "amount": 1234, "note": "ada"},
        "errors": [
            {"attempt": 1, "class": "builtins.ValueError", "at": "2026-12-04T12:00:00+00:00",
             "message": "card 5555-4444 (4111111111111111) refused for tok-4242-secret",
             "traceback": "Traceback ...\nValueError: tok-4242-secret, pin 123, 1234 EUR"},
        ],
        "unique_key": '["tok-4242-secret"]',
        "partition_key": None,
    }  # fmt: skip
    assert hidden((job["args"], job["kwargs"]), redact("charge", job["args"], job["kwargs"])) == [
        "4111111111111111",
        "tok-4242-secret",
        "5555-4444",
    ]  # fmt: skip  (the pin is too short to blank; "ada" and the amount are still shown)
    shown = redacted(job, redact, None)
    (error,) = shown["errors"]
    assert error["message"] == f"card {MASK} ({MASK}) refused for {MASK}"
    assert error["traceback"].endswith(f"ValueError: {MASK}, pin 123, 1234 EUR")
    assert error["at"] == job["errors"][0]["at"] and shown["unique_key"] == f'["{MASK}"]'
    assert shown["args"] == ["***"] * 3 and job["args"][0] == "tok-4242-secret"  # not changed
    plain = redacted(job, None, lambda name, text: f"{name}: {len(text)} characters")
    message = job["errors"][0]["message"]
    assert plain["errors"][0]["message"] == f"charge: {len(message)} characters"
    assert plain["args"] == job["args"] and plain["unique_key"] == job["unique_key"]
    assert redacted({"name": "x", "args": [], "kwargs": {}, "errors": None}, redact, None)


def test_values_hidden_from_the_arguments_are_blanked_out_of_the_result_and_progress() -> None:
    def redact(name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        return ["***"], kwargs

    job = {
        "name": "charge",
        "args": ["tok-4242-secret"],
        "kwargs": {},
        "result": {"receipt": "paid with tok-4242-secret", "amounts": [1, "tok-4242-secret"]},
        "progress_message": "charging tok-4242-secret",
        "meta": {"note": "for tok-4242-secret", "tenant": "acme"},
    }
    shown = redacted(job, redact, None)
    assert shown["result"] == {"receipt": f"paid with {MASK}", "amounts": [1, MASK]}
    assert shown["meta"] == {"note": f"for {MASK}", "tenant": "acme"}
    assert shown["progress_message"] == f"charging {MASK}"
    assert redacted(job, None, None)["result"] == job["result"]  # no hook: shown as stored
