"""Helpers of benchmarks/sync: document corpus, synthetic upstream, database seeding."""
