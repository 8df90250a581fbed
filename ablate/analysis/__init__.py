"""A stored study as tables, statistics and verdicts."""
