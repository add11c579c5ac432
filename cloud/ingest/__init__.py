"""The cloud's ingest core: deduplicate, decode, batch, judge, store, observe.

gRPC Session streams, the unary Infer and the MQTT bridge are fronts on one `IngestCore`; what a
sample gets back is an `Admission` (its Ack now and, when accepted, an `Outcome` later: the stored
verdict, or a `Deferral` that tells the edge to send it again).
"""

from cloud.ingest.config import IngestConfig
from cloud.ingest.core import Admission, Deferral, IngestCore, Outcome, VerdictObserver, decision_label

__all__ = ["Admission", "Deferral", "IngestConfig", "IngestCore", "Outcome", "VerdictObserver", "decision_label"]
