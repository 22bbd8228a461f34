"""lmops: a self-hosted platform for running large language models in production."""

__version__ = "0.1.0"
