"""``pgjobs bench``: measure pgjobs on your own database, in a schema of its own.

Every mode works in the ``pgjobs_bench`` schema (migrated at the start, dropped at the end), so
your jobs are never touched. The runs use the default, fenced, at-least-once configuration.

* ``enqueue``: one job per transaction on one connection, against the same loop of bare
  ``INSERT`` + ``COMMIT`` statements and against itself with the insert notification trigger
  disabled (interleaved, so drift hits all alike);
* ``bulk``: ``App.enqueue_many``;
* ``process``: a burst worker (``--processes``, ``--concurrency``) burns down pre-enqueued no-op
  jobs; timed from its start to its exit;
* ``latency``: an idle worker; each job (``async def`` with ``--async-jobs``) is committed alone
  and reports, over a loopback UDP socket, the moment its function starts. Latency is that moment
  minus the moment just before ``COMMIT``, on the same host clock.
* ``steady``: offered load (``async def`` jobs with ``--async-jobs``). A worker runs while jobs
  are committed at a fixed rate, a batch every 10 ms; latency as in ``latency``, for every job,
  read by a thread of its own so that no report waits in the socket buffer. The backlog is sampled
  once a second.
* ``rate``: a backlog under a rate limit of ``--rate`` starts a second, for the whole queue or,
  with ``--partitions K``, per each of K partition keys. Each job reports when its code started,
  as in ``steady``; the figures are the starts a second sustained over ``--duration`` seconds
  from the first start (the smallest over the keys) against the rate, and the most starts in any
  one-second window, which the limit holds to the rate.
* ``scale``: the claim statement on a big table. The table is filled with available and finished
  jobs by ``INSERT ... SELECT``, vacuumed and analyzed; then ``claim_jobs`` runs again and again on
  one connection, each claim followed by ``finish_jobs`` for its jobs, and only the claim is timed.
"""

from ._modes import JSON_ONLY, BenchOptions, run

__all__ = ["JSON_ONLY", "BenchOptions", "run"]
