"""The command line: `python -m distributed.cli generate ...` and `python -m distributed.cli join ...`."""
