"""The errors a user sees: each message names the file or setting and the reason, and nothing is left
half-written when one is raised."""

from __future__ import annotations


class DubbingError(Exception):
    """An input that cannot be dubbed; the message names the file and the reason."""


class AnimationError(DubbingError):
    """An input that cannot be animated; the message names the file and the reason."""


class ConfigurationError(ValueError):
    """A setting that cannot work (an unknown emotion, an emotion for a model without an emotion
    controller, a motion source a generator has no use for); the message says which and what to do."""
