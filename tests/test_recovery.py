"""Recovery: stop the app (or SIGKILL a real server) mid-run; the run finishes, nothing repeats."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from runtime.app import create_app
from runtime.config import Config
from tests.conftest import TEST_SECRET, auth, start_run, wait_run
from tests.outside import Outside
from tests.test_runs import edge, http

AppClient = TestClient[web.Request, web.Application]
StartApp = Callable[[str], Awaitable[AppClient]]


@pytest.fixture
def start_app(config: Config, aiohttp_client: AiohttpClient) -> StartApp:
    """Start another app instance (another 'process') on the test database."""

    async def start(node_id: str) -> AppClient:
        cfg = Config(database_url=config.database_url, jwt_secret=TEST_SECRET, node_id=node_id)
        return await aiohttp_client(create_app(cfg))

    return start


async def _publish(client: AppClient, nodes: list[dict[str, Any]], edges: list[Any]) -> str:
    body = {"name": "wf", "definition": {"nodes": nodes, "edges": edges}}
    resp = await client.post("/api/v1/workflows", json=body, headers=auth())
    wf_id: str = (await resp.json())["data"]["id"]
    resp = await client.post(f"/api/v1/workflows/{wf_id}/publish", headers=auth())
    assert resp.status == 200, await resp.text()
    return wf_id


def _three_steps(base: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nodes = [http("a", f"{base}/ok/a"), http("b", f"{base}/block/b"), http("c", f"{base}/ok/c")]
    return nodes, [edge("a", "b"), edge("b", "c")]


async def test_stopping_mid_step_then_restarting_finishes_the_run(
    start_app: StartApp, outside: tuple[Outside, str]
) -> None:
    world, base = outside
    first = await start_app("node-1")
    wf_id = await _publish(first, *_three_steps(base))
    run = await start_run(first, wf_id)
    await asyncio.wait_for(world.blocked.wait(), 10)
    await first.close()  # b is in flight

    world.release.set()
    second = await start_app("node-2")
    done = await wait_run(second, run["id"])
    assert done["status"] == "succeeded", done
    assert world.calls["/ok/a"] == 1, "a recorded step is not executed again"
    assert world.calls["/ok/c"] == 1
    assert world.keys["/block/b"] == [f"{run['id']}:b"] * 2, "in-flight step re-ran, same key"


async def test_a_delay_keeps_its_wake_time_across_a_restart(start_app: StartApp) -> None:
    first = await start_app("node-1")
    wf_id = await _publish(first, [{"id": "nap", "type": "delay", "data": {"seconds": 1.0}}], [])
    run = await start_run(first, wf_id)
    await asyncio.sleep(0.4)
    await first.close()
    await asyncio.sleep(0.2)
    second = await start_app("node-2")
    done = await wait_run(second, run["id"])
    assert done["status"] == "succeeded"
    waited = done["output"]["nap"]["waited_s"]
    assert 0.9 <= waited < 1.5, f"the wait restarted: {waited} s"


async def test_a_paused_run_stays_paused_across_a_restart(start_app: StartApp) -> None:
    first = await start_app("node-1")
    wf_id = await _publish(first, [{"id": "gate", "type": "approval", "data": {}}], [])
    run = await start_run(first, wf_id)
    await wait_run(first, run["id"], ("paused",))
    await first.close()
    second = await start_app("node-2")
    await asyncio.sleep(0.2)
    assert (await wait_run(second, run["id"], ("paused",)))["status"] == "paused"
    resp = await second.post(
        f"/api/v1/runs/{run['id']}/resume", json={"step_id": "gate"}, headers=auth()
    )
    assert resp.status == 202
    assert (await wait_run(second, run["id"]))["status"] == "succeeded"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Serve = Callable[[str], Awaitable[tuple[str, asyncio.subprocess.Process]]]


@pytest.fixture
async def serve(database_url: str) -> AsyncIterator[Serve]:
    """Start real `stepwell serve` processes; returns each one's base URL and process."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(node_id: str) -> tuple[str, asyncio.subprocess.Process]:
        port = _free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "STEPWELL_JWT_SECRET": TEST_SECRET,
            "PORT": str(port),
            "STEPWELL_NODE_ID": node_id,
            "STEPWELL_LEASE_TTL_S": "2",
            "STEPWELL_LOG_FORMAT": "text",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runtime.cli",
            "serve",
            "--host",
            "127.0.0.1",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{url}/health/ready") as resp:
                        if resp.status == 200:
                            return url, proc
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("stepwell serve did not become ready")

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


async def test_sigkill_of_a_real_server_loses_nothing(
    serve: Serve, outside: tuple[Outside, str]
) -> None:
    world, base = outside
    first, victim = await serve("proc-1")
    async with aiohttp.ClientSession(headers=auth()) as http_client:
        nodes, edges = _three_steps(base)
        body = {"name": "wf", "definition": {"nodes": nodes, "edges": edges}}
        async with http_client.post(f"{first}/api/v1/workflows", json=body) as resp:
            wf_id = (await resp.json())["data"]["id"]
        async with http_client.post(f"{first}/api/v1/workflows/{wf_id}/publish") as resp:
            assert resp.status == 200
        async with http_client.post(f"{first}/api/v1/workflows/{wf_id}/run", json={}) as resp:
            assert resp.status == 202
            run_id = (await resp.json())["data"]["id"]
        await asyncio.wait_for(world.blocked.wait(), 20)

        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        world.release.set()

        second, _ = await serve("proc-2")  # another node: it waits for the dead one's lease
        status = ""
        for _ in range(400):
            async with http_client.get(f"{second}/api/v1/runs/{run_id}") as resp:
                status = (await resp.json())["data"]["status"]
            if status == "succeeded":
                break
            await asyncio.sleep(0.05)
    assert status == "succeeded"
    assert world.calls["/ok/a"] == 1 and world.calls["/ok/c"] == 1
    assert world.keys["/block/b"] == [f"{run_id}:b"] * 2
