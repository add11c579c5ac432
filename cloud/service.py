"""The cloud service assembled: store, backend, batcher, policy engine, gRPC server and admin API.

Start-up order: open the store, load the signing key and the policy engine, start the batcher (which
loads the backend's model), open the gRPC server (health NOT_SERVING until now) and the admin API,
then report SERVING. `stop` is the one ordered shutdown: health NOT_SERVING, sessions end after
delivering what they owe, the gRPC server stops accepting, the batcher serves what is queued, the
last verdicts are stored, the admin API and the store close, all within server.shutdown_grace_s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from cloud.api import AdminServer, AdminState, create_app
from cloud.api.auth import load_identity
from cloud.api.recorder import EdgeSnapshotter, PolicyRecorder
from cloud.backends import Backend, build_backend
from cloud.batcher import DynamicBatcher
from cloud.bridge.bridge import MqttBridge
from cloud.config import CloudConfig, StoreConfig
from cloud.dataset import FieldDataset
from cloud.ingest import IngestCore
from cloud.metrics import CloudMetrics
from cloud.models.registry import ModelRegistry
from cloud.models.rollout import RolloutController
from cloud.policy import PolicyEngine, PolicySigner
from cloud.policy.lease import AdvisoryLease
from cloud.policy.loop import BandController
from cloud.policy.shared import PgPolicyState
from cloud.policy.signing import write_key_files
from cloud.server import EdgeGLMServicer, FleetStatus, Health, SessionDeps, build_health_server, build_server
from cloud.server.identity import IdentityCheck, revocation_list
from cloud.store import VerdictStore
from cloud.store.pairs import PairStore
from cloud.store.pg import describe, postgres_database, read_dsn
from cloud.store.retention import StoreRetention
from common.tracing import Tracing, setup_tracing
from protos.policy_settings import WatchRule

logger = logging.getLogger(__name__)


def load_signer(config: CloudConfig) -> PolicySigner:
    """The policy signer the config names (created if asked to), or a throw-away one when it names none."""
    path = config.policy.signing_key
    if path is None:
        signer = PolicySigner.ephemeral()
        logger.warning(
            "policy.signing_key is not set: policies are signed with throw-away key %s that no edge trusts",
            signer.key_id,
        )
        return signer
    if not path.exists() and config.policy.create_signing_key:
        write_key_files(path, path.with_suffix(".pub"))
        logger.warning("created policy signing key %s; install %s on the edges", path, path.with_suffix(".pub"))
    return PolicySigner.from_file(path)


def _shared_policy(config: StoreConfig) -> PgPolicyState | None:
    """Replicas on one PostgreSQL store share the policy state too; a SQLite store keeps it in a file."""
    if config.kind != "postgres":
        return None
    dsn = read_dsn(config.dsn_file_required)
    return PgPolicyState(dsn, describe(dsn))


def _verdict_store(config: StoreConfig) -> VerdictStore:
    """The verdict store `store.kind` names: the SQLite file at `path`, or the PostgreSQL server."""
    if config.kind == "sqlite":
        return VerdictStore(config.path)
    return VerdictStore(database=postgres_database(config.dsn_file_required, "verdict store", config.pool_size))


class CloudService:
    """One cloud service instance; `start`, then `stop` (once)."""

    def __init__(
        self,
        config: CloudConfig,
        metrics: CloudMetrics | None = None,
        backend: Backend | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """Build the parts from config (nothing starts yet); `backend` and `tracing` replace the configured
        ones (tests)."""
        self.config = config
        self.tracing = tracing or setup_tracing(config.tracing, "edgeglm-cloud")
        self.metrics = metrics or CloudMetrics()
        self.backend = backend or build_backend(config.backend, self.metrics)
        self.store = _verdict_store(config.store)
        self.batcher = DynamicBatcher(self.backend, config.batcher, self.metrics)
        self.fleet = FleetStatus()
        self.health = Health()
        self.policy: PolicyEngine | None = None
        self.servicer: EdgeGLMServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self._admin: AdminServer | None = None
        self.ingest: IngestCore | None = None
        self.port = 0
        self.admin_port = 0
        self._stopped = False
        self._bridge: MqttBridge | None = None
        self._snapshotter: EdgeSnapshotter | None = None
        self._retention: StoreRetention | None = None
        self.bands: BandController | None = None  # the closed loop, when policy.closed_loop.enabled
        self.dataset: FieldDataset | None = None  # the field dataset, when dataset.enabled
        self.rollout: RolloutController | None = None  # model rollouts, when models.registry is set
        self._lease: AdvisoryLease | None = None  # replicas on one database: which one runs the closed loop
        self.failed = asyncio.Event()  # set when a part it cannot work without died; the process must exit
        self.failure = ""
        self._health_task: asyncio.Task[None] | None = None
        self.batcher.on_failure = self._part_failed

    @property
    def leads_loop(self) -> bool:
        """Whether this replica runs the closed loop: always on a SQLite store, the lease holder's on PostgreSQL."""
        if self.bands is None:
            return False
        return self._lease is None or self._lease.held

    async def start(self) -> None:
        """Open everything, load the model, listen; SERVING once ready. A failure closes what was opened."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        await self.store.open()
        signer = await asyncio.to_thread(load_signer, config)
        self.policy = await asyncio.to_thread(  # reads and writes the version state file
            PolicyEngine,
            signer,
            config.store.policy_state_path,
            self.metrics,
            fleet=config.policy.fleet,
            sites=config.policy.sites,
            edges=config.policy.edges,
            lifetime_s=config.policy.lifetime_s,
            shared=_shared_policy(config.store),
        )
        logger.info("policy v%d in force, signed by key %s", self.policy.version, signer.key_id)
        await PolicyRecorder(self.policy, self.store).start()  # the policy history of the admin API
        self._snapshotter = EdgeSnapshotter(
            self.fleet,
            self.store,
            config.admin.edge_snapshot_interval_s,
            failures=self.metrics.task_failures.labels("edge-snapshots"),
        )
        self._snapshotter.start()
        self._retention = StoreRetention(
            self.store, config.store.retention_s, failures=self.metrics.task_failures.labels("store-retention")
        )
        self._retention.start()
        self.ingest = IngestCore(
            self.store,
            self.batcher,
            self.backend,
            self.metrics,
            config.ingest,
            tracing=self.tracing,
            rules=self._watch_rules,
        )
        self.ingest.start()
        if config.policy.closed_loop.enabled:
            self.bands = self._band_controller(self.policy)
            await self.bands.start()
            self.ingest.add_observer(self.bands.observe)
        if config.dataset.enabled:
            store = config.store
            shared = None if store.kind == "sqlite" else postgres_database(store.dsn_file_required, "field dataset", 2)
            self.dataset = FieldDataset(config.dataset, self.metrics, database=shared)
            await self.dataset.open()
            self.ingest.add_observer(self.dataset.observe)
            logger.info("field dataset: %s", self.dataset.where)
            if shared is not None and config.dataset.storage.kind == "folder":
                logger.warning(
                    "field dataset: the replicas share its records but each keeps its images in its own folder "
                    "(%s); give dataset.storage an S3 bucket or mount one shared volume there",
                    config.dataset.path,
                )
        registry = ModelRegistry(config.models.registry) if config.models.registry is not None else None
        if registry is not None:
            self.rollout = RolloutController(
                config.models.rollout,
                self.policy,
                registry,
                self.fleet,
                self.metrics.registry,
                leader=lambda: self._lease is None or self._lease.held,
            )
            await self.rollout.start()
            self.ingest.add_observer(self.rollout.observe)
        deps = SessionDeps(
            ingest=self.ingest,
            backend=self.backend,
            policy=self.policy,
            fleet=self.fleet,
            metrics=self.metrics,
            known_edges=frozenset(config.known_edges),
            send_queue_size=config.server.session_send_queue_size,
            max_in_flight=config.server.max_samples_in_flight_per_session,
            hello_timeout_s=config.server.hello_timeout_s,
            shutdown_grace_s=config.server.shutdown_grace_s,
            identities=IdentityCheck(revocation_list(config.server.tls)),
            models=registry,
            model_chunk_bytes=config.models.chunk_bytes,
        )
        self.servicer = EdgeGLMServicer(deps)
        self._server, self.port = build_server(config.server, self.servicer, self.health)
        await self._server.start()
        health_only = build_health_server(config.server, self.health)
        if health_only is not None:
            self._health_server, self.health_port = health_only
            await self._health_server.start()
            logger.info("gRPC health (plaintext, health only) on %s:%d", config.server.host, self.health_port)
        logger.info("gRPC on %s:%d (NOT_SERVING until the backend is loaded)", config.server.host, self.port)
        if config.server.tls is None:
            logger.warning(
                "gRPC without TLS: any client that reaches port %d may say it is any edge; fine on loopback or a "
                "private network, set server.tls (edgeglm-cloud pki) anywhere else",
                self.port,
            )
        if config.admin.enabled:
            state = AdminState(
                policy=self.policy,
                fleet=self.fleet,
                metrics=self.metrics,
                health=self.health,
                store=self.store,
                closed_loop=self.bands,
                rollout=self.rollout,
                models=registry,
            )
            admin = config.admin
            users = [load_identity(user.name, user.role, user.token_file) for user in admin.users]
            app = create_app(state, users, admin.allowed_hosts, (admin.write_rate_per_s, admin.write_burst))
            self._admin = AdminServer(app, admin.host, admin.port)
            await self._admin.start()
            self.admin_port = self._admin.port
        await self.batcher.start()
        if config.mqtt.enabled:
            self._bridge = MqttBridge(
                config.mqtt,
                self.ingest,
                self.policy,
                self.metrics,
                fleet=self.fleet,
                known_edges=config.known_edges,
                models=registry,
                model_piece_bytes=config.models.chunk_bytes,
            )
            await self._bridge.start()
            logger.info("MQTT bridge to %s:%d", config.mqtt.host, config.mqtt.port)
        await asyncio.to_thread(self.policy.follow_from, asyncio.get_running_loop())  # other replicas' changes
        await self.health.serving()
        logger.info(
            "serving: backend %s (model %s %s), gRPC port %d, admin port %s",
            self.backend.name,
            self.backend.model_name,
            self.backend.model_version,
            self.port,
            self.admin_port or "off",
        )

    def _part_failed(self, error: BaseException) -> None:
        """The batcher died: NOT_SERVING at once (load balancers and edges go elsewhere), then exit non-zero."""
        self.failure = f"the batcher died: {error!r}"
        logger.critical("%s; NOT_SERVING, the service stops", self.failure)
        self.metrics.task_failures.labels("batcher").inc()
        self._health_task = asyncio.get_running_loop().create_task(self.health.not_serving())
        self.failed.set()

    def _band_controller(self, policy: PolicyEngine) -> BandController:
        loop = self.config.policy.closed_loop
        store = self.config.store
        database = None if store.kind == "sqlite" else postgres_database(store.dsn_file_required, "pair store", 2)
        pairs = PairStore(store.path, loop.window_pairs, loop.history_per_key, database=database)
        leader: Callable[[], bool] | None = None
        if store.kind == "postgres":  # replicas: the one holding the lease runs the loop over all their pairs
            dsn = read_dsn(store.dsn_file_required)
            lease = AdvisoryLease(dsn, describe(dsn))
            lease.start()
            self._lease = lease

            def leader() -> bool:
                return lease.held

        return BandController(loop, policy, pairs, self.metrics.registry, site_of=self._site_of, leader=leader)

    def _site_of(self, edge_id: str) -> str:
        """The site an edge said it is at (empty while it has not said)."""
        record = self.fleet.get(edge_id)
        return record.site_id if record is not None else ""

    def _watch_rules(self, edge_id: str) -> tuple[WatchRule, ...]:
        """The watch rules of the policy in force for an edge: what its samples' rule ids mean."""
        assert self.policy is not None
        return self.policy.effective(edge_id, self._site_of(edge_id))[0].mining.watch_rules

    async def stop(self) -> None:
        """The ordered shutdown, bounded by server.shutdown_grace_s (again is a no-op)."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + self.config.server.shutdown_grace_s

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        await self.health.shutting_down()
        if self.servicer is not None:
            await self.servicer.stop_sessions()
            if not await self.servicer.wait_sessions_closed(left()):
                logger.warning("sessions still open at the end of the grace period; they are cut")
        if self._server is not None:
            await self._server.stop(left())
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._bridge is not None:
            # Before the batcher: the verdicts the bridge still owes need it.
            await self._bridge.stop(time.monotonic() + left())
        await self.batcher.stop(left())
        if self.ingest is not None:
            unfinished = await self.ingest.drain(time.monotonic() + left())
            if unfinished:
                logger.warning(
                    "%d samples were accepted but not judged before shutdown (edges send them again)", unfinished
                )
        if self.rollout is not None:
            await self.rollout.close()
        if self.bands is not None:
            await self.bands.close()  # after the last verdicts: their pairs are written
        if self.dataset is not None:
            await self.dataset.close()  # after the last verdicts: their records are written
        if self._lease is not None:
            await asyncio.to_thread(self._lease.close)
        if self._admin is not None:
            await self._admin.stop()
        if self._snapshotter is not None:
            await self._snapshotter.stop()
        if self._retention is not None:
            await self._retention.stop()
        if self.policy is not None:
            await asyncio.to_thread(self.policy.close)
        await self.store.close()
        await asyncio.to_thread(self.tracing.shutdown)  # the spans still batched go out
        logger.info("cloud service stopped")
