"""The errors a user sees: one line naming the culprit, exit status 2, no traceback (see __main__.py).

- ConfigError: params.yaml is wrong (unknown key, wrong type, value out of range).
- InputError: an input is missing, unreadable or unusable (a source folder, a corrupt image in strict
  mode, a class too small, an upstream output that was made for other data).
- GateError: the generate stage could not reach its target through the quality gate.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix; printed as one line."""


class ConfigError(PipelineError):
    """Bad params."""


class InputError(PipelineError):
    """Bad or missing input data or upstream output."""


class GateError(PipelineError):
    """Too few synthetic images passed the quality gate."""
