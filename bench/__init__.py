"""Latency benchmarks of the deployable runtime; kept out of runtime/ so that it ships without them."""
