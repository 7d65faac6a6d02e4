"""The worker's per-job shortcuts give what the long way gives."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import pgjobs
from pgjobs._context import JobContext, running_context


def test_running_context_is_the_dataclass_built_with_every_field() -> None:
    values = {
        "id": 7,
        "name": "a.job",
        "queue": "q",
        "attempt": 2,
        "max_attempts": 5,
        "worker_id": "w",
        "_stopping": threading.Event(),
        "_cancelled_ids": {7},
        "batch_id": 3,
        "_args": [1],
        "_kwargs": {"b": 2},
        "_meta": {"m": 1},
        "_report": print,
        "_claim": object(),
    }
    names = [f.name for f in dataclasses.fields(JobContext)]
    assert sorted(names) == sorted(values)  # a new field must be given here and there
    fast = running_context(*(values[name] for name in names))
    slow = JobContext(**values)  # type: ignore[arg-type]
    assert vars(fast) == vars(slow)
    assert fast == slow
    assert fast.cancelled and fast.args == (1,) and dict(fast.meta) == {"m": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.id = 8  # type: ignore[misc]


def test_progress_hands_the_claim_to_the_reporter() -> None:
    reports: list[tuple[object, float, str | None]] = []
    claim = object()
    context = dataclasses.replace(
        JobContext(
            id=1,
            name="x",
            queue="q",
            attempt=1,
            max_attempts=1,
            worker_id="w",
            _stopping=threading.Event(),
        ),
        _report=lambda *report: reports.append(report),
        _claim=claim,
    )
    context.progress(0.25, "a quarter")
    assert reports == [(claim, 0.25, "a quarter")]
    with pytest.raises(pgjobs.ValidationError):
        context.progress(2.0)
    assert len(reports) == 1


def test_a_shape_of_arguments_that_fits_is_bound_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = pgjobs.App(database_url="postgresql://nowhere.invalid/none")

    @app.job
    def greet(name: str, *, loud: bool = False) -> None: ...

    binds: list[tuple[object, ...]] = []
    signature = greet._signature

    class Counting:
        def bind(self, *args: object, **kwargs: object) -> object:
            binds.append(args)
            return signature.bind(*args, **kwargs)

    monkeypatch.setattr(greet, "_signature", Counting())
    greet.check_arguments(["ann"], {"loud": True})
    greet.check_arguments(["bob"], {"loud": False})
    assert len(binds) == 1  # the same shape, other values: not bound again
    greet.check_arguments(["ann"], {})
    assert len(binds) == 2
    for _ in range(2):  # a shape that does not fit is refused every time, never remembered
        with pytest.raises(TypeError, match=r"greet.*name"):
            greet.check_arguments([], {"loud": True})
        with pytest.raises(TypeError, match="greet"):
            greet.check_arguments(["a", "b"], {})
    assert len(binds) == 6


def test_a_job_remembers_few_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    app = pgjobs.App(database_url="postgresql://nowhere.invalid/none")

    @app.job
    def anything(**kwargs: object) -> None: ...

    monkeypatch.setattr("pgjobs._job.SHAPES_KEPT", 3)
    for n in range(10):
        anything.check_arguments([], {f"k{n}": n})
    assert len(anything._fitting_shapes) == 3
    with pytest.raises(TypeError, match="anything"):
        anything.check_arguments([1], {})
