"""`python -m fflm` is the `fflm` command."""

from .cli import main

main()
