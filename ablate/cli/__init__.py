"""The ablate command line."""

from ablate.cli.app import app, main

__all__ = ["app", "main"]
