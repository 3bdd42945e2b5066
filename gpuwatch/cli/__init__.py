"""The command line: `main` (argument parsing, exit codes, one-line errors) and one module per subcommand.
The top layer: it may import everything below it (capture, tui, attribution, store) and `reports`."""

from gpuwatch.cli.main import console_main, main

__all__ = ["console_main", "main"]
