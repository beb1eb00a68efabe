"""`python -m argd.cli ...` behaves like the installed `argd` script."""

from argd.cli.main import run

run()
