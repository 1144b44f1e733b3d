"""Typed user-facing errors. The CLI prints their message and exits non-zero, without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass


class RebalanceError(Exception):
    """Base class for errors caused by the user's input, config or environment."""

    exit_code = 1


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a pipeline config.

    Attributes:
        source: the file the offending key came from, or "command line" for an override.
        key: dotted key path, e.g. ``steps.export.num_shards``.
        message: what is wrong and what was expected.
        hint: how to fix it (a did-you-mean, the allowed values), or "".
    """

    source: str
    key: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.source}: {self.key}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class ConfigError(RebalanceError):
    """A pipeline config is invalid. Carries every issue found, not only the first."""

    exit_code = 2

    def __init__(self, issues: list[ConfigIssue], subject: str = "the pipeline config"):
        self.issues = list(issues)
        count = len(self.issues)
        lines = [f"{count} problem{'s' if count != 1 else ''} in {subject}:"]
        lines += [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class DataError(RebalanceError):
    """Input data is missing, malformed or inconsistent (corrupt image, unknown class id, ...)."""

    exit_code = 3


class StepError(RebalanceError):
    """A step failed while running; the message names the step and how to resume."""

    exit_code = 4


class StorageError(RebalanceError):
    """The cache or output folder could not be written (disk full, quota, permissions)."""

    exit_code = 5


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """The close match to ``word`` among ``choices`` (if any) and the allowed values, for a message."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    allowed = ", ".join(choices) if len(choices) <= 12 else f"{len(choices)} choices"
    return (f"did you mean {close[0]!r}? " if close else "") + f"allowed: {allowed}"
