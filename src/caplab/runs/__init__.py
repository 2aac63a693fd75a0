"""Runs: the run directory, the SQLite catalog and reports."""
