"""Benchmarks users run on their own nodes (``fedhpc bench ...``)."""
