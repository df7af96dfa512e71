"""Peer chat servers the benchmark measures the gateway against."""
