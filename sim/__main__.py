"""`python -m sim` runs the sim command line."""

from sim.cli import app

app()
