"""Benchmarks: each compares relaybus with a baseline measured in the same run."""
