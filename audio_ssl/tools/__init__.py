"""Command-line tools beyond the Lightning CLI subcommands (demo, cross-validation, results, ...)."""
