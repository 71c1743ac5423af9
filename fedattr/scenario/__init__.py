"""Scenarios: the schema of an experiment file, its overrides and grids, its checks, its plans."""
