"""Helpers for tests, benchmarks and doc scripts: child processes (a server, an MLflow
server) started and stopped cleanly. Not part of the installed packages."""
