"""A small aiohttp server standing in for the Vertex AI REST API (CustomJobs only).

No Vertex emulator exists, so tests point the real client's REST transport at this server. It
answers the four calls Stepwell makes, in the JSON shapes the transport sends and parses
(camelCase field names, `google.rpc.Status`-shaped errors), and lets a test script what each
job's state does next and inspect what was created.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from google.cloud.aiplatform_v1 import JobState

_PARENT = "/v1/projects/{project}/locations/{location}/customJobs"
_TERMINAL = {
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_EXPIRED",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
}
_RUNNING = {"JOB_STATE_RUNNING", "JOB_STATE_UPDATING", "JOB_STATE_PARTIALLY_SUCCEEDED"}
# One clause of a list filter: labels.<key>="<value>" (quotes optional), as AIP-160 spells it.
_LABEL_CLAUSE = re.compile(r'^labels\.([a-z0-9_-]+)\s*=\s*"?([a-z0-9_-]*)"?$')


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _encode(request: web.Request, job: dict[str, Any]) -> dict[str, Any]:
    """The job as sent: the state as a number when the client asks for that, as the transport
    does (`$alt=json;enum-encoding=int`), else by name. Unknown names pass as they are."""
    state = job["state"]
    if "enum-encoding=int" in request.query.get("$alt", "") and state in JobState.__members__:
        return {**job, "state": JobState.__members__[state].value}
    return job


def _reply(request: web.Request, job: dict[str, Any]) -> web.Response:
    return web.json_response(_encode(request, job))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, "status": code}}, status=status
    )


class FakeVertex:
    """CustomJobs kept in memory. Each GET of a job applies the next state of its script."""

    def __init__(self, page_size: int = 2) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}  # name -> the job as the API returns it
        self.created: list[dict[str, Any]] = []  # request bodies of creates, in order
        self.calls: Counter[str] = Counter()  # "create", "get", "list", "cancel"
        self.filters: list[str] = []  # list filters as received
        self.page_size = page_size  # when the client sends no pageSize
        self.unavailable = 0  # answer the next N job GETs with 502 Bad Gateway
        self._scripts: dict[str, deque[tuple[str | int, str | None]]] = {}
        self._ids = itertools.count(1000000000000000001)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(_PARENT, self._create)
        app.router.add_get(_PARENT, self._list)
        app.router.add_get(_PARENT + "/{job_id}", self._get)
        app.router.add_post(_PARENT + "/{job_id}:cancel", self._cancel)
        return app

    # The test-facing side.

    def script(self, name: str, states: Sequence[str | int], error: str | None = None) -> None:
        """Make the next GETs of `name` move through `states`, one per GET; then it stays.

        `error` becomes the job's `error.message` when the last state is reached. A number
        stands for a state newer than the client library knows.
        """
        steps: deque[tuple[str | int, str | None]] = deque((s, None) for s in states)
        if error is not None and steps:
            steps[-1] = (steps[-1][0], error)
        self._scripts[name] = steps

    def add_job(self, project: str, location: str, body: dict[str, Any]) -> str:
        """Store a job as if someone had created it earlier; returns its name."""
        name = f"projects/{project}/locations/{location}/customJobs/{next(self._ids)}"
        now = _now()
        self.jobs[name] = {
            **body,
            "name": name,
            "state": "JOB_STATE_QUEUED",
            "createTime": now,
            "updateTime": now,
        }
        return name

    # The API side.

    def _apply(self, job: dict[str, Any], state: str | int, error: str | None) -> None:
        now = _now()
        job["state"] = state
        job["updateTime"] = now
        if state in _RUNNING:
            job.setdefault("startTime", now)
        if state in _TERMINAL:
            job.setdefault("endTime", now)
        if error is not None:
            # google.rpc.Code: CANCELLED (1) for a cancelled job, else INTERNAL (13).
            job["error"] = {"code": 1 if state == "JOB_STATE_CANCELLED" else 13, "message": error}

    def _name(self, request: web.Request) -> str:
        m = request.match_info
        return f"projects/{m['project']}/locations/{m['location']}/customJobs/{m['job_id']}"

    async def _create(self, request: web.Request) -> web.Response:
        self.calls["create"] += 1
        body = await request.json()
        self.created.append(body)
        if not body.get("displayName") or not body.get("jobSpec", {}).get("workerPoolSpecs"):
            return _error(400, "INVALID_ARGUMENT", "displayName and workerPoolSpecs are required")
        m = request.match_info
        name = self.add_job(m["project"], m["location"], body)
        return _reply(request, self.jobs[name])

    async def _get(self, request: web.Request) -> web.Response:
        self.calls["get"] += 1
        if self.unavailable > 0:
            self.unavailable -= 1
            return _error(502, "UNAVAILABLE", "the fake is having a bad moment")
        name = self._name(request)
        job = self.jobs.get(name)
        if job is None:
            return _error(404, "NOT_FOUND", f"CustomJob {name} not found")
        script = self._scripts.get(name)
        if script:
            self._apply(job, *script.popleft())
        return _reply(request, job)

    async def _list(self, request: web.Request) -> web.Response:
        self.calls["list"] += 1
        m = request.match_info
        parent = f"projects/{m['project']}/locations/{m['location']}/customJobs/"
        wanted: dict[str, str] = {}
        query = request.query.get("filter", "")
        self.filters.append(query)
        for clause in filter(None, (c.strip() for c in query.split(" AND "))):
            match = _LABEL_CLAUSE.match(clause)
            if match is None:
                return _error(400, "INVALID_ARGUMENT", f"unsupported filter clause {clause!r}")
            wanted[match[1]] = match[2]
        jobs = [
            job
            for name, job in self.jobs.items()
            if name.startswith(parent)
            and all(job.get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        start = int(request.query.get("pageToken") or 0)
        size = int(request.query.get("pageSize") or self.page_size)
        page: dict[str, Any] = {
            "customJobs": [_encode(request, j) for j in jobs[start : start + size]]
        }
        if start + size < len(jobs):
            page["nextPageToken"] = str(start + size)
        return web.json_response(page)

    async def _cancel(self, request: web.Request) -> web.Response:
        self.calls["cancel"] += 1
        name = self._name(request)
        job = self.jobs.get(name)
        if job is None:
            return _error(404, "NOT_FOUND", f"CustomJob {name} not found")
        if job["state"] in _TERMINAL:
            return _error(400, "FAILED_PRECONDITION", f"CustomJob {name} is already finished")
        # Cancelling now; the next GET still says so, the one after says cancelled.
        self._apply(job, "JOB_STATE_CANCELLING", None)
        self.script(name, ["JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"], error="CANCELED")
        return web.json_response({})
