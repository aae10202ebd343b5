"""`python -m fflm.cli` is the `fflm` command too."""

from . import main

main()
