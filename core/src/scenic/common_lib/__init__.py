"""Config loading and validation, the CLI runner, debug utilities."""
