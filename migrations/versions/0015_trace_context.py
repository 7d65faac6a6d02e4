"""The W3C trace context of the enqueue a job came from, for tracing across to the worker.

``jobs.trace_context`` holds the propagator's carrier (``{"traceparent": ..., "tracestate":
...}``) written at enqueue when the app is instrumented (``pgjobs.tracing``), and ``NULL``
otherwise; it is never changed after the insert, so every attempt of a job joins its enqueue's
trace. The claims return it: ``claim_limited_jobs()`` (0011's function) gains the column before
``free_in``, which changes its result type, so it is dropped and created again. A batch's
callbacks carry the context of the batch's creation: ``settle_batch()`` inserts their
template's ``trace_context`` key.

Revision ID: 0015
Revises: 0014
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import context, op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

RESULT_CHANGES = (
    (
        "claim_token uuid, batch_id bigint,\n               free_in float8)",
        "claim_token uuid, batch_id bigint,\n               trace_context jsonb, free_in float8)",
        1,
    ),
    (
        "j.max_attempts, j.claim_token, j.batch_id",
        "j.max_attempts, j.claim_token, j.batch_id, j.trace_context",
        2,
    ),
    (
        "u.claim_token, u.batch_id, NULL::float8",
        "u.claim_token, u.batch_id, u.trace_context, NULL::float8",
        2,
    ),
    ("NULL::uuid, NULL::bigint, waits;", "NULL::uuid, NULL::bigint, NULL::jsonb, waits;", 1),
    (
        "SELECT NULL, q.name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,",
        "SELECT NULL, q.name, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,",
        1,
    ),
)
"""0011's ``claim_limited_jobs()`` with ``trace_context`` returned: each piece of its text, what
replaces it, and how many times it occurs."""


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(f"ALTER TABLE {s}.jobs ADD COLUMN trace_context jsonb")
    op.execute(f"DROP FUNCTION {s}.claim_limited_jobs(text[], integer, uuid)")
    op.execute(claim_function(schema))
    op.execute(settle_function(schema, traced=True))


def claim_function(schema: str) -> str:
    """``claim_limited_jobs()`` as this revision defines it."""
    text: str = _revision("0011_held_queues.py").claim_function(schema)
    for before, after, occurrences in RESULT_CHANGES:
        assert text.count(before) == occurrences, before
        text = text.replace(before, after)
    return text


def settle_function(schema: str, traced: bool) -> str:
    """``settle_batch()``: 0008's, and ``traced``, this revision's, which gives each callback
    the ``trace_context`` of its template (``NULL`` for a template without one)."""
    s = f'"{schema}"'
    column, value = (
        (",\n                          trace_context", ",\n           c.job->'trace_context'")
        if traced
        else ("", "")
    )
    return f"""
CREATE OR REPLACE FUNCTION {s}.settle_batch(settled bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    b {s}.batches;
    success_id bigint;
    complete_id bigint;
BEGIN
    SELECT * INTO b FROM {s}.batches WHERE id = settled FOR UPDATE;
    IF NOT FOUND OR b.sealed_at IS NULL OR b.pending > 0 THEN
        RETURN;
    END IF;
    -- The callbacks' ids are recorded before they are inserted, so that count_batch_job knows
    -- them for callbacks and leaves the counters alone.
    IF b.on_complete IS NOT NULL AND b.complete_job_id IS NULL THEN
        complete_id := nextval(pg_get_serial_sequence('{s}.jobs', 'id'));
    END IF;
    IF b.on_success IS NOT NULL AND b.success_job_id IS NULL AND b.failed = 0 THEN
        success_id := nextval(pg_get_serial_sequence('{s}.jobs', 'id'));
    END IF;
    IF b.finished_at IS NOT NULL AND complete_id IS NULL AND success_id IS NULL THEN
        RETURN;
    END IF;
    UPDATE {s}.batches
    SET finished_at = coalesce(finished_at, now()),
        complete_job_id = coalesce(complete_job_id, complete_id),
        success_job_id = coalesce(success_job_id, success_id)
    WHERE id = settled;
    INSERT INTO {s}.jobs (id, queue, name, args, kwargs, priority, max_attempts, batch_id{column})
    SELECT c.id, c.job->>'queue', c.job->>'name', c.job->'args', c.job->'kwargs',
           (c.job->>'priority')::smallint, (c.job->>'max_attempts')::int, settled{value}
    FROM (VALUES (complete_id, b.on_complete), (success_id, b.on_success)) AS c(id, job)
    WHERE c.id IS NOT NULL
    ORDER BY c.id;
END
$$"""


def _revision(filename: str) -> ModuleType:
    """An earlier revision's module, loaded from its file."""
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"pgjobs_migration_{path.stem[:4]}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(settle_function(schema, traced=False))
    op.execute(f"DROP FUNCTION {s}.claim_limited_jobs(text[], integer, uuid)")
    op.execute(_revision("0011_held_queues.py").claim_function(schema))
    op.execute(f"ALTER TABLE {s}.jobs DROP COLUMN trace_context")
