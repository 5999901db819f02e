"""Errors raised for one bad sample, and for bad configuration of the data pipeline.

A ``SampleError`` carries a short machine-readable ``reason`` (one of the loader skip reasons in
``docs/data_format.md``) and a human-readable ``detail``. The loader catches it, counts the sample
as skipped under its reason and moves on; everything else is a bug and propagates.
"""

from __future__ import annotations


class SampleError(Exception):
    """One sample cannot be used. ``reason`` is a stable key for counting, ``detail`` is for people."""

    def __init__(self, reason: str, detail: str = "", key: str | None = None):
        self.reason = reason
        self.detail = detail
        self.key = key
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"sample {self.key!r}: " if self.key else ""
        return f"{where}{self.reason}" + (f" ({self.detail})" if self.detail else "")

    def with_key(self, key: str) -> SampleError:
        """Return the same error, naming the sample it happened in."""
        return SampleError(self.reason, self.detail, key)


class TooManySkipsError(RuntimeError):
    """The fraction of skipped samples went over ``DataConfig.max_skip_rate``."""


class DataConfigError(ValueError):
    """A data config value is wrong; the message names the field."""


class EmptySourceError(RuntimeError):
    """A data source yields no sample at all where the epoch mode needs it to (balanced mode)."""
