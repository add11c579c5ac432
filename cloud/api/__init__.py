"""The admin HTTP API and dashboard: health, metrics, policies and their history, fleet, verdicts, series."""

from cloud.api.app import AdminState, create_app
from cloud.api.server import AdminServer

__all__ = ["AdminServer", "AdminState", "create_app"]
