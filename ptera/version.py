"""The package version (``ptera.version``, ``ptera.__version__``).

Decisions:

* A 1.4-series number: coleo pins ``ptera~=1.4.1``, and this release keeps every
  program written against 1.4.1's public API working.
"""

version = "1.4.2"

__all__ = ["version"]
