"""`python -m edge` runs the edge command line."""

from edge.cli import app

app()
