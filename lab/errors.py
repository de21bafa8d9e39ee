"""Errors the lab reports as one line (``lab: error: …``) instead of a traceback."""

from __future__ import annotations


class LabError(Exception):
    """An expected failure. ``details`` (e.g. a console log tail) is shown before the line."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class PreflightError(LabError):
    """Something is missing or in the way; nothing was started."""


class WaitTimeout(LabError):
    """A bounded wait for real readiness ran out."""
