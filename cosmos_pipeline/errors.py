"""Errors a user can act on.

`InputError` is raised for anything wrong with what the user asked for (a request field, a bundle,
a media file, an output path). It is always raised before a model is loaded, and the CLI turns it
into a one-paragraph message and exit code 2. Its message says what was wrong, with which value,
and what to do instead.
"""


class InputError(ValueError):
    """Bad user input, detected before any model is loaded or GPU time is spent."""


class GuardrailUnavailableError(RuntimeError):
    """The Cosmos guardrail was requested but cannot be loaded."""
