"""hookstream: webhook delivery for e-commerce platforms (Kafka domain events in, signed HTTPS webhooks out)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hookstream")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
