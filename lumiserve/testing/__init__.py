"""Helpers for tests and benchmarks: tiny random-weight models of the real architectures, built offline."""
