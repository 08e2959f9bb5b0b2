"""One exception family, so the CLI can print a single clear line instead of a traceback."""

from __future__ import annotations


class TfcnnError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""


class ConfigError(TfcnnError):
    """A pipeline file or --set override names an unknown key, a wrong type or an impossible value."""


class DataError(TfcnnError):
    """A data source is missing, empty, mislabelled or unreadable."""


class ExportError(TfcnnError):
    """An export step failed; the message names the step."""


class VerificationError(TfcnnError):
    """An exported artifact is missing, tampered with, or fails a threshold."""


class TrainingError(TfcnnError):
    """Training cannot produce a usable model (e.g. the loss went non-finite before any finite epoch)."""
