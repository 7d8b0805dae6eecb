"""Helpers of ``benchmarks/serve``: our server against nginx on the same files, on loopback."""
