"""The `argd` command line: one entry point, one module per command group (see main.py)."""
