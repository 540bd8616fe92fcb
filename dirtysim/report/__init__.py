"""Projections of the event log: per-sync rounds, the query-migrate summary, plots, files."""
