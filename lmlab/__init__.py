"""lmlab: a lab for small transformer language models."""

__version__ = "0.1.0"
