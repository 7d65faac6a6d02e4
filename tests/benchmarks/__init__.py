"""Benchmarks of pgjobs against the other PostgreSQL job queues for Python.

The command is :mod:`tests.benchmarks.compare` (its docstring says how to run it); each system is
driven by a module of its own in :mod:`tests.benchmarks.peers`.
"""
