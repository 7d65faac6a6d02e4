"""An app whose cron entry has an hour out of range: importing it fails, naming the entry and
the field (tests/test_cron.py)."""

from __future__ import annotations

import pgjobs

app = pgjobs.App()


@app.job(name="reports.nightly", cron="0 25 * * *", tz="Europe/Berlin")
def nightly() -> None:
    pass
