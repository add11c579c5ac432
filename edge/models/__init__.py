"""Edge models the cloud rolls out: fetched, verified, self-tested, swapped in, kept for rollback."""

from edge.models.config import ModelUpdateConfig
from edge.models.store import InstalledModel, ModelStore
from edge.models.updater import ModelUpdater, RunningModel

__all__ = ["InstalledModel", "ModelStore", "ModelUpdateConfig", "ModelUpdater", "RunningModel"]
