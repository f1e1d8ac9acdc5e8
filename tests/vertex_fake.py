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


# --- Models, Endpoints and their long-running operations (deployments) -----------------------

_LOCATION = "/v1/projects/{project}/locations/{location}"
_OPERATION_TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."


class FakeVertexServing(FakeVertex):
    """FakeVertex that also uploads Models, creates Endpoints and deploys Models to them.

    Those three calls are long-running operations: each answers an Operation that is not done,
    and the client polls `GET /ui/{operation name}` (the first HTTP rule of the async REST
    operations client; `/v1/` is served too). The operation is done at the `operation_polls`-th
    poll, and only then does its effect appear (the Model, the Endpoint, the DeployedModel), as
    on Vertex. `fail["deploy"] = "message"` makes the next deployModel operation end with that
    error instead (likewise "upload" and "endpoint").
    """

    def __init__(self, page_size: int = 2) -> None:
        super().__init__(page_size)
        self.models: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.uploads: list[dict[str, Any]] = []  # request bodies, in order
        self.endpoint_creates: list[dict[str, Any]] = []
        self.deploys: list[dict[str, Any]] = []  # with "endpoint": the endpoint's name added
        self.fail: dict[str, str] = {}
        self.operation_polls = 1
        self._operations: dict[str, dict[str, Any]] = {}
        self._finishers: dict[str, Any] = {}  # operation name -> () -> response JSON

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post(_LOCATION + "/models:upload", self._upload)
        app.router.add_get(_LOCATION + "/models", self._list_models)
        app.router.add_post(_LOCATION + "/endpoints", self._create_endpoint)
        app.router.add_get(_LOCATION + "/endpoints", self._list_endpoints)
        app.router.add_get(_LOCATION + "/endpoints/{endpoint_id}", self._get_endpoint)
        app.router.add_post(_LOCATION + "/endpoints/{endpoint_id}:deployModel", self._deploy)
        for root in ("/ui", "/v1"):
            app.router.add_get(root + "/{name:projects/.+/operations/[0-9]+}", self._operation)
        return app

    # The API side.

    def _parent(self, request: web.Request) -> str:
        return "projects/{project}/locations/{location}".format(**request.match_info)

    def _start(self, resource: str, kind: str, finish: Any) -> web.Response:
        """A new operation on `resource`; `finish()` gives its response when it is done."""
        name = f"{resource}/operations/{next(self._ids)}"
        self._operations[name] = {"name": name, "done": False, "polls": 0, "kind": kind}
        self._finishers[name] = finish
        return web.json_response({"name": name, "done": False})

    async def _operation(self, request: web.Request) -> web.Response:
        self.calls["get_operation"] += 1
        name = request.match_info["name"]
        op = self._operations.get(name)
        if op is None:
            return _error(404, "NOT_FOUND", f"Operation {name} not found")
        if not op["done"]:
            op["polls"] += 1
            if op["polls"] >= self.operation_polls:
                op["done"] = True
                message = self.fail.pop(op["kind"], None)
                if message is None:
                    op["response"] = self._finishers.pop(name)()
                else:
                    # google.rpc.Code INVALID_ARGUMENT (3), as Vertex reports a bad machine type.
                    op["error"] = {"code": 3, "message": message}
        return web.json_response(
            {k: op[k] for k in ("name", "done", "response", "error") if k in op}
        )

    async def _upload(self, request: web.Request) -> web.Response:
        self.calls["upload"] += 1
        body = await request.json()
        self.uploads.append(body)
        model = body.get("model", {})
        if not model.get("displayName") or not model.get("containerSpec", {}).get("imageUri"):
            return _error(400, "INVALID_ARGUMENT", "displayName and containerSpec are required")
        name = f"{self._parent(request)}/models/{next(self._ids)}"

        def finish() -> dict[str, Any]:
            self.models[name] = {**model, "name": name, "createTime": _now(), "versionId": "1"}
            return {"@type": _OPERATION_TYPE + "UploadModelResponse", "model": name}

        return self._start(name, "upload", finish)

    async def _create_endpoint(self, request: web.Request) -> web.Response:
        self.calls["create_endpoint"] += 1
        body = await request.json()
        self.endpoint_creates.append(body)
        if not body.get("displayName"):
            return _error(400, "INVALID_ARGUMENT", "displayName is required")
        name = f"{self._parent(request)}/endpoints/{next(self._ids)}"

        def finish() -> dict[str, Any]:
            self.endpoints[name] = {**body, "name": name, "createTime": _now()}
            return {"@type": _OPERATION_TYPE + "Endpoint", **self.endpoints[name]}

        return self._start(name, "endpoint", finish)

    async def _get_endpoint(self, request: web.Request) -> web.Response:
        self.calls["get_endpoint"] += 1
        name = f"{self._parent(request)}/endpoints/{request.match_info['endpoint_id']}"
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return _error(404, "NOT_FOUND", f"Endpoint {name} not found")
        return web.json_response(endpoint)

    async def _deploy(self, request: web.Request) -> web.Response:
        self.calls["deploy"] += 1
        name = f"{self._parent(request)}/endpoints/{request.match_info['endpoint_id']}"
        body = await request.json()
        self.deploys.append({**body, "endpoint": name})
        if name not in self.endpoints:
            return _error(404, "NOT_FOUND", f"Endpoint {name} not found")
        deployed = body.get("deployedModel", {})
        if deployed.get("model") not in self.models:
            return _error(400, "INVALID_ARGUMENT", f"Model {deployed.get('model')} not found")

        def finish() -> dict[str, Any]:
            endpoint = self.endpoints[name]
            model_id = str(next(self._ids))
            placed = {**deployed, "id": model_id, "createTime": _now()}
            endpoint["deployedModels"] = [*endpoint.get("deployedModels", []), placed]
            # The request's split replaces the endpoint's; "0" stands for the new model.
            split = body.get("trafficSplit") or {"0": 100}
            endpoint["trafficSplit"] = {(model_id if k == "0" else k): v for k, v in split.items()}
            return {"@type": _OPERATION_TYPE + "DeployModelResponse", "deployedModel": placed}

        return self._start(name, "deploy", finish)

    def _labelled(self, request: web.Request, items: dict[str, dict[str, Any]]) -> Any:
        """The items under the request's parent whose labels match its filter, or an error."""
        wanted: dict[str, str] = {}
        query = request.query.get("filter", "")
        self.filters.append(query)
        for clause in filter(None, (c.strip() for c in query.split(" AND "))):
            match = _LABEL_CLAUSE.match(clause)
            if match is None:
                return _error(400, "INVALID_ARGUMENT", f"unsupported filter clause {clause!r}")
            wanted[match[1]] = match[2]
        parent = self._parent(request) + "/"
        return [
            item
            for name, item in items.items()
            if name.startswith(parent)
            and all(item.get("labels", {}).get(k) == v for k, v in wanted.items())
        ]

    def _page(self, request: web.Request, key: str, items: Any) -> web.Response:
        if isinstance(items, web.Response):
            return items
        start = int(request.query.get("pageToken") or 0)
        size = int(request.query.get("pageSize") or self.page_size)
        page: dict[str, Any] = {key: items[start : start + size]}
        if start + size < len(items):
            page["nextPageToken"] = str(start + size)
        return web.json_response(page)

    async def _list_models(self, request: web.Request) -> web.Response:
        self.calls["list_models"] += 1
        return self._page(request, "models", self._labelled(request, self.models))

    async def _list_endpoints(self, request: web.Request) -> web.Response:
        self.calls["list_endpoints"] += 1
        return self._page(request, "endpoints", self._labelled(request, self.endpoints))
