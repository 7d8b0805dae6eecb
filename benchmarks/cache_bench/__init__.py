"""Helpers of ``benchmarks/cache``: the seeded world and the measuring run."""
