"""Batch counters that no caller can rewrite: ``add_batch_jobs()`` counts the jobs it adds.

Before this revision the statement that added jobs to a batch named the batch in the setting
``<schema>.counting_batch``, which told the row trigger on ``jobs`` to leave its jobs alone, and
then counted them with ``count_added_jobs()``. But any role may set any setting: a role that may
insert jobs could call ``count_added_jobs()`` on any batch with any number (its callbacks then
never fire), or insert jobs into a batch uncounted (its callbacks fire early, and the
acknowledgement of those jobs fails ``batches_counters_check``).

``add_batch_jobs()`` locks the batch, inserts the jobs and counts them with one update of the
batch, as the tables' owner (``SECURITY DEFINER``). The row trigger leaves an inserted job
uncounted only when the setting ``<schema>.adding_batch`` names its batch and the inserting role
may update ``batches``: inside ``add_batch_jobs()`` that is the owner, who sets the setting just
around its insert (an error rolls it back with the rest); outside, only a role that could rewrite
the counters anyway. Every other insert into a batch is counted row by row. (A function's ``SET``
clause would scope the setting more tightly, but PostgreSQL refuses one for a setting that no
module defines unless a superuser allowed the migrating role to set it.)

The previous release's statement still works: it sets ``counting_batch``, which the trigger no
longer reads, so its jobs are counted row by row (slower for thousands of jobs, exact), and
``count_added_jobs()``, kept with its signature for that statement, changes nothing. It goes a
release later, with ``lock_batch()``, which only that statement calls.

A role's insert through ``add_batch_jobs()`` is the owner's, which the insert guard (0006) lets
by: the function holds the jobs' arguments to the guard's size limit itself.

Revision ID: 0017
Revises: 0016
"""

from alembic import context, op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

MAX_ARGUMENTS_BYTES = 1024 * 1024
"""The insert guard's limit on ``args`` and ``kwargs`` as text (0006's); frozen here."""


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    # The trigger first: its lock waits for the statements under way, so none of them sees the
    # old trigger with the new count_added_jobs().
    op.execute(f"DROP TRIGGER jobs_batch_inserted ON {s}.jobs")
    op.execute(f"""
CREATE TRIGGER jobs_batch_inserted AFTER INSERT ON {s}.jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND (
        NEW.batch_id::text IS DISTINCT FROM current_setting('{schema}.adding_batch', true)
        OR NOT has_table_privilege('{s}.batches'::regclass, 'UPDATE')))
    EXECUTE FUNCTION {s}.count_batch_jobs()""")
    op.execute(f"""
CREATE OR REPLACE FUNCTION {s}.count_added_jobs(batch bigint, added integer) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT added
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.count_added_jobs(bigint, integer) IS
'Returns added and changes nothing: kept for the previous release''s statement adding jobs to a
batch, whose jobs the row trigger now counts. Dropped a release later.'""")
    op.execute(f"""
CREATE FUNCTION {s}.add_batch_jobs(
    batch bigint, queues text[], names text[], args text[], kwargs text[], priorities integer[],
    max_attempts integer[], ats timestamptz[], delays float8[], partition_keys text[],
    trace_context jsonb)
RETURNS TABLE (batch_found boolean, batch_finished_at timestamptz, job_ids bigint[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    oversized bigint;
    job record;
BEGIN
    SELECT b.finished_at INTO batch_finished_at
    FROM {s}.batches AS b WHERE b.id = batch FOR UPDATE;
    batch_found := FOUND;
    job_ids := '{{}}';
    IF NOT batch_found OR batch_finished_at IS NOT NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    PERFORM set_config('{schema}.adding_batch', batch::text, true);
    WITH inserted AS (
        INSERT INTO {s}.jobs AS j (queue, name, args, kwargs, priority, max_attempts,
                                   scheduled_at, state, batch_id, partition_key, trace_context)
        SELECT r.queue, r.name, r.args::jsonb, r.kwargs::jsonb, r.priority, r.max_attempts,
               r.run_at, CASE WHEN r.run_at > now() THEN 'scheduled' ELSE 'available' END,
               batch, r.partition_key, add_batch_jobs.trace_context
        FROM (
            SELECT u.*, coalesce(u.at, now() + make_interval(secs => u.delay)) AS run_at
            FROM unnest(queues, names, args, kwargs, priorities, max_attempts, ats, delays,
                        partition_keys) WITH ORDINALITY
                AS u(queue, name, args, kwargs, priority, max_attempts, at, delay,
                     partition_key, position)
            ORDER BY u.position
        ) AS r
        RETURNING j.id, octet_length(j.args::text) + octet_length(j.kwargs::text) AS size
    )
    SELECT coalesce(array_agg(i.id ORDER BY i.id), '{{}}'),
           min(i.id) FILTER (WHERE i.size > {MAX_ARGUMENTS_BYTES})
    INTO job_ids, oversized
    FROM inserted AS i;
    PERFORM set_config('{schema}.adding_batch', '', true);
    IF oversized IS NOT NULL THEN
        SELECT j.id, j.name, octet_length(j.args::text) + octet_length(j.kwargs::text) AS size
        INTO job FROM {s}.jobs AS j WHERE j.id = oversized;
        RAISE EXCEPTION USING
            ERRCODE = 'check_violation', CONSTRAINT = 'jobs_arguments_size_check',
            MESSAGE = 'job ' || job.id || ' (' || job.name || '): its arguments are '
                      || job.size || ' bytes as text, over the {MAX_ARGUMENTS_BYTES}-byte limit',
            HINT = 'Store large data in a table of your own and pass its id.';
    END IF;
    IF cardinality(job_ids) > 0 THEN
        UPDATE {s}.batches AS b
        SET total = b.total + cardinality(job_ids), pending = b.pending + cardinality(job_ids)
        WHERE b.id = batch;
    END IF;
    RETURN NEXT;
END
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.add_batch_jobs(bigint, text[], text[], text[], text[], integer[],
                                       integer[], timestamptz[], float8[], text[], jsonb) IS
'Add jobs to a batch unless it has finished, and count them: one job per element of the arrays
(args and kwargs as JSON text; a NULL at runs after delay seconds), each carrying trace_context.
Locks the batch row until the end of the transaction, so that the job that would finish the
batch waits, or has finished it. Returns whether the batch exists, its finished_at (no job was
added if set) and the new jobs'' ids in order. Arguments over the insert guard''s size limit are
refused.'""")
    op.execute(
        f"REVOKE EXECUTE ON FUNCTION {s}.add_batch_jobs(bigint, text[], text[], text[], text[],"
        " integer[], integer[], timestamptz[], float8[], text[], jsonb) FROM PUBLIC"
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    s = f'"{schema}"'
    op.execute(f"DROP TRIGGER jobs_batch_inserted ON {s}.jobs")
    op.execute(f"""
CREATE TRIGGER jobs_batch_inserted AFTER INSERT ON {s}.jobs
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND NEW.batch_id::text IS DISTINCT FROM
                       current_setting('{schema}.counting_batch', true))
    EXECUTE FUNCTION {s}.count_batch_jobs()""")
    op.execute(
        f"DROP FUNCTION {s}.add_batch_jobs(bigint, text[], text[], text[], text[], integer[],"
        " integer[], timestamptz[], float8[], text[], jsonb)"
    )
    op.execute(f"""
CREATE OR REPLACE FUNCTION {s}.count_added_jobs(batch bigint, added integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF added <> 0 AND current_setting('{schema}.counting_batch', true) IS DISTINCT FROM batch::text
       OR added < 0 THEN
        RAISE EXCEPTION USING MESSAGE = format(
            'count_added_jobs(%s, %s) outside an addition of jobs to that batch', batch, added);
    END IF;
    PERFORM set_config('{schema}.counting_batch', '', true);
    UPDATE {s}.batches SET total = total + added, pending = pending + added WHERE id = batch;
    RETURN added;
END
$$""")
    op.execute(f"""
COMMENT ON FUNCTION {s}.count_added_jobs(bigint, integer) IS
'Count jobs just added to a batch by one statement that set <schema>.counting_batch to the
batch''s id (the row trigger leaves those jobs to this), and clear that setting. Used by the
statement that App.batch and App.add_to_batch run; for other inserts the row trigger counts.'""")
