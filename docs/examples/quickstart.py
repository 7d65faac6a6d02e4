"""The jobs of the README's first command: run with `sh docs/examples/quickstart.sh`."""

from __future__ import annotations

import asyncio
import logging

import pgjobs

app = pgjobs.App()
log = logging.getLogger("quickstart")


@app.job(name="greet")
def greet(name: str) -> None:
    log.info("hello, %s (job %s)", name, pgjobs.current_job().id)


@app.job(name="flaky", retry=lambda attempt, exc: 0)
def flaky(name: str) -> None:
    attempt = pgjobs.current_job().attempt
    if attempt < 2:
        raise RuntimeError(f"{name}: attempt {attempt} fails on purpose; it will be retried")
    log.info("%s succeeded on attempt %s", name, attempt)


@app.job(name="count_words", queue="critical", priority=-1)
async def count_words(text: str) -> int:
    await asyncio.sleep(0.01)
    words = len(text.split())
    log.info("%r has %s words", text, words)
    return words
