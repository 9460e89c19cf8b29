"""The `sluice` command line: the top layer, one module per command group, over flows, serving, evals and tasks."""
