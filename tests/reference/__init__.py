"""Slow pure-Python oracles for the compiled extensions (never used at run time)."""
