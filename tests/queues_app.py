"""Jobs on several queues, for tests/test_cli.py: a worker given this app and no queues serves
every one of them. An app of its own, so that its queues never reach other tests' workers."""

from __future__ import annotations

import pgjobs

app = pgjobs.App()
app.queue("imports")  # declared only: its jobs come from ``plain.options(queue="imports")``


@app.job(name="queues.plain")
def plain() -> None:
    pass


@app.job(name="queues.mail", queue="mailers")
def mail() -> None:
    pass


@app.job(name="queues.report", queue="reports", cron="@yearly")
def report() -> None:
    pass
