"""Benchmark jobs: a load sweep against a running deployment through the gateway, its figures per step."""
