"""Benchmarks: our figures beside the peer tools' from the same run (not pass/fail)."""
