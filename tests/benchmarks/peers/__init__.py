"""One module per system under test, each run by the interpreter of that system's own virtual
environment (pgjobs and the raw SQL loops by this repository's). They share only
:mod:`tests.benchmarks.peers._protocol`, which needs nothing beyond the standard library and
psycopg, so no module here imports another system's package.

Type-check a peer's module against its own environment::

    .venv/bin/mypy --strict --ignore-missing-imports \
        --python-executable .bench/venvs/pgqueuer/bin/python \
        tests/benchmarks/peers/pgqueuer_bench.py

(``--ignore-missing-imports`` because asyncpg and chancy ship no type information).
"""
