"""`python -m sim.openai_server` as a process: it prints where it listens, checks the key, answers chats."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from cloud.backends import OpenAIBackend, OpenAIBackendConfig
from sim.glm.evaluate import held_out_cases
from tests.helpers.backends import judgements

# torch on every core, under deadlines sized for one model at a time (tests/conftest.py).
pytestmark = pytest.mark.one_at_a_time("glm")

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0


@contextmanager
def server_process(*args: str) -> Iterator[str]:
    """Start the server on a free port; yields its base URL (read from its first line of output)."""
    command = [sys.executable, "-m", "sim.openai_server", "--port", "0", *args]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # "serving <model> on http://127.0.0.1:<port>/v1"
            assert " on http://127.0.0.1:" in line, line
            yield line.rsplit(" ", 1)[1].strip()
        finally:
            process.terminate()
            try:
                process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(WAIT_S)


def chat_body(model: str) -> dict[str, object]:
    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Edge: cat 0.40"}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 16}


def test_the_scripted_server_process_answers_with_the_key_and_refuses_without(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-cli\n")
    with server_process("--scripted-answer", '{"decision": "rejected"}', "--api-key-file", str(key_file)) as url:
        good = {"Authorization": "Bearer sk-cli"}
        models = httpx.get(f"{url}/models", headers=good, timeout=WAIT_S)
        answer = httpx.post(f"{url}/chat/completions", json=chat_body("scripted"), headers=good, timeout=WAIT_S)
        refused = httpx.post(f"{url}/chat/completions", json=chat_body("scripted"), timeout=WAIT_S)
        other_model = httpx.post(f"{url}/chat/completions", json=chat_body("gpt-4o"), headers=good, timeout=WAIT_S)
    assert [m["id"] for m in models.json()["data"]] == ["scripted"]
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == '{"decision": "rejected"}'
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert other_model.status_code == 404
    assert "'gpt-4o' is not served here" in other_model.json()["error"]["message"]


@pytest.mark.slow
async def test_the_world_glm_server_process_judges_held_out_crops_for_the_openai_backend() -> None:
    cases = held_out_cases(2, seed=0, claim_seed=42)
    with server_process("--model-path", str(ROOT / "sim" / "models" / "glm-world"), "--device", "cpu") as url:
        backend = OpenAIBackend(OpenAIBackendConfig(base_url=url, model="glm-world", timeout_s=WAIT_S))
        await backend.start()
        try:
            results = judgements(await backend.infer([case.sample for case in cases]))
        finally:
            await backend.close()
    assert len(cases) >= 5
    assert not [r.text for r in results if r.text.startswith(("openai backend:", "unparsable"))]
    agree = sum(r.decision == case.truth.decision for r, case in zip(results, cases, strict=True))
    assert agree >= len(cases) - 2  # the model is right on 9 in 10 of held-out crops (its eval.json)
