"""The README's and the guide's Python examples, and docs/examples, type-check with
``mypy --strict``.

Each document's ```python blocks become one module (a block whose first line is a comment naming a
file, like ``# myproject/jobs.py``, becomes that file), after a preamble declaring the few names
the examples leave to the reader (``engine``, ``user``, ...). A misuse of pgjobs' API in an
example, such as a job argument of the wrong type, fails this test.
"""

from __future__ import annotations

import re
from pathlib import Path

import mypy.api
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/guide.md")
EXAMPLES = (ROOT / "docs/examples/quickstart.py", ROOT / "docs/examples/welcome_email/app.py")
"""Runnable examples, checked as they are."""
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
FILE_COMMENT = re.compile(r"# ([\w/]+\.py)\n")

PREAMBLE = """\
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession


class User:
    id: int


class UserDeleted(Exception): ...


def alert(exc: BaseException) -> None: ...


def rate_limited(account_id: int) -> bool:
    return False


engine: Engine
async_session: AsyncSession
conn: psycopg.Connection[Any]
user: User
ids: list[int]
job_id: int
"""
"""Names the examples use without defining them, with the types they stand for."""

MYPY_CONFIG = """\
[mypy]
strict = True
disable_error_code = top-level-await

[mypy-pgserver.*,testcontainers.*]
ignore_missing_imports = True
"""
"""``--strict``; an example may ``await`` at the top level, as in a notebook or an async def."""


def write_examples(texts: dict[str, str], into: Path) -> list[Path]:
    """The Python blocks of each document (name -> markdown) as modules under ``into``."""
    written = []
    for name, text in texts.items():
        body = []
        for block in BLOCK.findall(text):
            named = FILE_COMMENT.match(block)
            if named:
                path = into / named.group(1)
                path.parent.mkdir(parents=True, exist_ok=True)
                for parent in path.relative_to(into).parents[:-1]:  # not `into` itself
                    (into / parent / "__init__.py").touch()
                path.write_text(block)
                written.append(path)
            else:
                body.append(block)
        module = into / f"{Path(name).stem.lower()}_examples.py"
        module.write_text(PREAMBLE + "\n\n" + "\n\n".join(body))
        written.append(module)
    return written


def type_check(texts: dict[str, str], into: Path, *also: Path) -> tuple[str, int]:
    """mypy's report and exit status for the examples of ``texts`` and the modules ``also``."""
    files = [*write_examples(texts, into), *also]
    config = into / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    report, errors, status = mypy.api.run(
        [
            "--config-file",
            str(config),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--no-error-summary",
            *map(str, files),
        ]
    )
    return report + errors, status


def documents() -> dict[str, str]:
    return {name: (ROOT / name).read_text() for name in DOCUMENTS}


@pytest.fixture
def examples_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # so that ``myproject`` imports from here
    return tmp_path


def test_readme_guide_and_example_apps_type_check(examples_dir: Path) -> None:
    texts = documents()
    assert all(BLOCK.search(text) for text in texts.values())
    report, status = type_check(texts, examples_dir, *EXAMPLES)
    assert status == 0, report


@pytest.mark.parametrize(
    ("example", "misuse", "complaint"),
    [
        (
            "send_welcome_email.using(session).enqueue(user.id)",
            'send_welcome_email.using(session).enqueue("not an id")',
            'Argument 1 to "enqueue" of "BoundJob" has incompatible type "str"; expected "int"',
        ),
        (
            "refresh_feed.using(async_session).enqueue_async(7)",
            "refresh_feed.using(async_session).enqueue_async(7, 8)",
            'Too many arguments for "enqueue_async" of "BoundJob"',
        ),
    ],
)
def test_a_misused_api_in_an_example_fails_the_check(
    examples_dir: Path, example: str, misuse: str, complaint: str
) -> None:
    readme = documents()["README.md"]
    assert example in readme
    report, status = type_check({"README.md": readme.replace(example, misuse)}, examples_dir)
    assert status == 1
    assert complaint in report


@pytest.mark.parametrize(
    ("example", "misuse", "complaint"),
    [
        (
            "print(source, status.succeeded,",
            'print(source, status["succeeded"],',
            'Value of type "BatchRecord" is not indexable',
        ),
        (
            'print(job.name, job.attempt, job.errors[-1]["message"])',
            "print(job.name, job.attempts)",
            '"JobRecord" has no attribute "attempts"',
        ),
        (
            "send_welcome_email.using(conn).enqueue(user_id)",
            'send_welcome_email.using("postgresql://").enqueue(user_id)',
            'Argument 1 to "using" of "Job" has incompatible type "str"',
        ),
        (
            "app.enqueue_many([resize.call(i) for i in ids], conn=session)",
            "app.enqueue_many([resize.call(i) for i in ids], conn=async_session)",
            'Argument "conn" to "enqueue_many" of "App" has incompatible type "AsyncSession"',
        ),
    ],
)
def test_records_and_connections_in_the_guide_are_type_checked(
    examples_dir: Path, example: str, misuse: str, complaint: str
) -> None:
    guide = documents()["docs/guide.md"]
    assert example in guide
    report, status = type_check({"docs/guide.md": guide.replace(example, misuse)}, examples_dir)
    assert status == 1
    assert complaint in report
