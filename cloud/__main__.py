"""`python -m cloud` runs the cloud command line."""

from cloud.cli import app

app()
