"""`python -m cli …` runs the `sluice` command (test and worker subprocesses start it this way)."""

from cli.main import main

main()
