"""Errors a user can cause with their input, as opposed to bugs."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (an empty context, an empty question, ...); the message is one line."""
