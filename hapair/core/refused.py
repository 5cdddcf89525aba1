"""The one error of an operator command that cannot be carried out (now). Pure."""

from __future__ import annotations


class Refused(Exception):
    """An operator command that cannot be carried out; the message says why."""
