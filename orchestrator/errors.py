"""Errors the orchestrator raises for bad user input (the CLI prints one line, exit 2)."""


class UserError(ValueError):
    """Bad input: unknown experiment, bad option combination, unreachable cluster."""
