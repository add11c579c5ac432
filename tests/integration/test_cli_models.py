"""`edgeglm-cloud model` and `edgeglm-cloud rollout`, run as an operator runs them, on real files and a
real service's admin API."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner, Result

from cloud.cli import app
from cloud.models.config import ModelsConfig
from cloud.service import CloudService
from tests.helpers.agents import MODEL, SILENT, cloud_config, make_agent_clip
from tests.helpers.model_files import segmentation_model, variant
from tests.helpers.policy_keys import generate_keypair

runner = CliRunner()


def test_publish_signs_the_model_into_the_registry_and_refuses_what_an_edge_could_not_run(tmp_path: Path) -> None:
    key, _ = generate_keypair(tmp_path / "keys", "policy-signing")
    registry = tmp_path / "registry"
    common = ["--registry", str(registry), "--signing-key", str(key), "--name", "yolo-edge"]
    done = runner.invoke(app, ["model", "publish", str(MODEL), "--version", "1", *common])
    assert done.exit_code == 0, done.output
    assert "published edgeglm://yolo-edge/1" in done.stdout
    listed = runner.invoke(app, ["model", "list", "--registry", str(registry)])
    assert listed.stdout.startswith("yolo-edge 1  parent -  4005158 bytes")
    # Another file under a published version, and a file that is no detector: refused, saying why.
    other = variant(tmp_path / "other.onnx", "other")
    again = runner.invoke(app, ["model", "publish", str(other), "--version", "1", *common])
    assert again.exit_code == 1 and "published already with another file" in again.stderr
    seg = runner.invoke(
        app, ["model", "publish", str(segmentation_model(tmp_path / "seg.onnx")), "--version", "2", *common]
    )
    assert seg.exit_code == 1 and "segment" in seg.stderr
    missing = runner.invoke(app, ["model", "publish", str(MODEL), "--version", "3", "--registry", str(registry)])
    assert missing.exit_code == 2 and "no signing key" in missing.stderr


async def test_rollout_commands_steer_a_running_service(tmp_path: Path) -> None:
    key, _ = generate_keypair(tmp_path / "keys", "policy-signing")
    registry = tmp_path / "registry"
    published = runner.invoke(
        app, ["model", "publish", str(MODEL), "--version", "2", "--registry", str(registry), "--signing-key", str(key)]
    )
    assert published.exit_code == 0, published.output
    config = cloud_config(tmp_path, make_agent_clip(tmp_path / "clip"), SILENT)
    config = config.model_copy(
        update={
            "models": ModelsConfig(registry=registry),
            "admin": config.admin.model_copy(update={"enabled": True, "host": "127.0.0.1", "port": 0}),
        }
    )
    service = CloudService(config)
    await service.start()
    try:
        admin = f"http://127.0.0.1:{service.admin_port}"

        async def run(*args: str) -> Result:
            return await asyncio.to_thread(lambda: runner.invoke(app, ["rollout", *args, "--admin", admin]))

        status = await run("status")
        assert "no rollout has begun" in status.stdout
        start = await run("start", "--version", "2", "--canary", "gw-x")
        assert start.exit_code == 0, start.output
        assert "edge 2: canary" in start.stdout and "canaries: gw-x" in start.stdout
        assert service.policy is not None
        assert service.policy.effective("gw-x")[0].model is not None
        back = await run("rollback", "--reason", "changed my mind")
        assert "rolled_back: changed my mind" in back.stdout
        assert service.policy.effective("gw-x")[0].model is None
        late = await run("promote")
        assert late.exit_code == 1 and "is rolled_back" in late.stderr
    finally:
        await service.stop()
