"""The admin HTTP API: health, metrics, policies, fleet status."""

from cloud.api.app import AdminState, create_app
from cloud.api.server import AdminServer

__all__ = ["AdminServer", "AdminState", "create_app"]
