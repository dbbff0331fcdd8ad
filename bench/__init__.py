"""Benchmarks of the relay (``python -m bench``); see bench/README.md."""
