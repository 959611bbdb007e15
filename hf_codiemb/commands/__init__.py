"""Subcommands of the `codiemb` console script, one module each."""
