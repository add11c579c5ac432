"""Why a request to the batcher got no result. `reason` is the request_failure metric's label."""

from __future__ import annotations


class BatcherError(Exception):
    """A request the batcher could not answer with a backend result."""

    reason = "error"


class QueueFullError(BatcherError):
    """The queue held max_queue_size requests; this one was refused at once."""

    reason = "queue_full"


class InferenceTimeoutError(BatcherError):
    """The request's deadline passed before its result came (if still queued, it was never inferred)."""

    reason = "timeout"


class BackendError(BatcherError):
    """The backend failed on the batch holding this request."""

    reason = "backend_error"


class BatcherStoppedError(BatcherError):
    """The batcher is stopping or stopped: the request was refused or could not be served in time."""

    reason = "shutdown"
