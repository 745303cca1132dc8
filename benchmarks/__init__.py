"""Benchmark scripts (run from the repository root with ``PYTHONPATH=.``); shared helpers in ``common``."""
