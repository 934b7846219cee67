"""`python -m coachpipe`: the same as the `coachpipe` command."""

from coachpipe.cli import main

main()
