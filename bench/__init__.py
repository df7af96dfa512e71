"""Benchmarks of the chat gateway against peer chat servers, all on loopback: ``python -m bench``."""
