"""pypi-mirror: a partial PyPI mirror with popularity-based cache management."""

__version__ = "0.1.0"
