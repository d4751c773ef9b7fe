"""Known failures. The CLI turns these into one stderr line and an exit code."""


class DsrlError(Exception):
    """A runtime failure we understand (exit 1)."""

    exit_code = 1


class BadInput(DsrlError):
    """Bad user input: unknown task, inconsistent shapes, missing upstream artifact, bad file (exit 2)."""

    exit_code = 2
