"""Ray Tune sweeps: search spaces from YAML, result tables."""
