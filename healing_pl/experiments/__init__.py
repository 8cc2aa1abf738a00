"""Experiment specs: the grid runner (one YAML -> a baseline, every run of the grid, the report)."""
