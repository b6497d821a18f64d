"""Analysis of saved records (no torch): run-to-run diffs with bootstrap intervals, power-law fits.

These modules take the plain records that `--json` writes and return plain dicts; the CLI shows them.
"""
