"""The router as a BentoML service with an OpenAI-compatible API that bills every request.

Built into a Bento by `stages/package_router.py` (build config: `[tool.bentoml.build]` in
pyproject.toml); the Bento's arguments name the packaged model and the serving settings, so
`bentoml serve routerops-router-service:<version>` needs nothing else. Endpoints:

- `POST /v1/chat/completions`: the question is the last user message (see
  `routerops.openai_api`); the reply is a `ChatCompletion` plus a `routerops` bill; headers
  `x-routerops-cost-usd` and `x-routerops-router-version` carry the same for proxies and logs.
- `GET /v1/models`: the served router version.
- BentoML's own `/livez`, `/readyz` (ready once the package is loaded) and `/metrics`.

Errors are OpenAI's error JSON. Auth is `Authorization: Bearer <key>` against the hashed key store
(`routerops keys create`); a key's budget is checked before a request and charged after it.
Requests beyond `max_concurrency` are refused at once with 429 and `Retry-After`. On SIGTERM the
requests in flight finish and are billed; a request that still reaches the worker gets 503 with
`Retry-After`, and connections that wait in the listen queue are reset when the server exits.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Literal

import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from routerops.keys import KeyRecord, KeyStore
from routerops.openai_api import (
    ApiError,
    chat_completion,
    error_body,
    new_completion_id,
    parse_chat_request,
    sse_chunks,
)
from routerops.packaging import load_package
from routerops.serving import RequestError, Router, keys_db_path

# A child of BentoML's logger, so the line lands in the server's log with BentoML's own.
log = logging.getLogger("bentoml.routerops")


class ServiceArgs(BaseModel):
    """The Bento's arguments (`bentoml build --arg`, recorded in bento.yaml; `bentoml serve
    --arg` overrides one): set from params `package_router` and `serve` at packaging time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str  # the BentoML model tag of the package
    max_concurrency: int
    retry_after_s: int
    timeout_s: float
    auth: Literal["required", "off"]
    # Env vars the profile's backends read (`routerops.serving.runtime_env_names`), declared on the
    # service so that BentoCloud refuses a deployment that does not set them.
    runtime_envs: tuple[str, ...] = ()


# HuggingFace's per-file "Loading weights" bars say nothing a server log needs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
args = bentoml.use_arguments(ServiceArgs)
app = FastAPI(title="RouterOps router", docs_url=None, redoc_url=None)


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    # FastAPI's own 404/405 in OpenAI's shape too.
    return JSONResponse(error_body(str(exc.detail), code=None), status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body(str(exc)), status_code=400)


class _Metrics:
    """Prometheus series, created in the worker (BentoML sets the multiprocess dir first)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Counter("routerops_requests", "Chat requests by HTTP status", ["status"])
        self.latency = Histogram("routerops_request_seconds", "Chat request latency (s)",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.calls = Counter("routerops_candidate_calls", "Candidate calls by model and outcome", ["model", "outcome"])
        self.usd = Counter("routerops_candidate_usd", "Dollars spent on candidates, by model", ["model"])
        self.key_usd = Counter("routerops_key_spend_usd", "Dollars billed to each API key", ["key_id"])
        self.refusals = Counter("routerops_refusals", "Requests refused, by reason", ["reason"])
        self.batch_size = Histogram("routerops_policy_batch_size", "Episodes per policy forward batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))


@bentoml.service(traffic={"timeout": args.timeout_s}, envs=[{"name": name} for name in args.runtime_envs])
@bentoml.asgi_app(app, path="/")
class RouterService:
    package_model = bentoml.models.BentoModel(args.model)

    def __init__(self) -> None:
        package = load_package(Path(self.package_model.path))
        self.router = Router(package)
        self.model_id = f"{package.record.model_tag}"
        self.keys = KeyStore(keys_db_path()) if args.auth == "required" else None
        self.in_flight = 0
        self.draining = False
        self._batches_seen: collections.Counter[int] = collections.Counter()
        self.metrics = _Metrics()
        self._chain_sigterm()
        import routerops

        log.info("serving router %s (model %s) with code from %s; auth %s, at most %d requests at once",
                 package.record.version, self.model_id, Path(routerops.__file__).parent, args.auth,
                 args.max_concurrency)

    def __is_ready__(self) -> bool:
        return True  # the package is loaded in __init__, before the first request

    # ----- helpers ----------------------------------------------------------------------------

    def _chain_sigterm(self) -> None:
        # uvicorn has installed its SIGTERM handler (stop accepting, let connections finish) by the
        # time the service is created; ours runs first to refuse what still arrives, then calls it.
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            self.draining = True
            log.info("SIGTERM: finishing %d request(s) in flight, refusing new ones", self.in_flight)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # no server handler to hand it to: the default, exit
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.raise_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _refuse(self, reason: str, exc: ApiError) -> ApiError:
        self.metrics.refusals.labels(reason=reason).inc()
        return exc

    async def _authenticate(self, request: Request) -> KeyRecord | None:
        if self.keys is None:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise self._refuse("auth", ApiError(
                401, "missing API key: send `Authorization: Bearer <key>` (create one with `routerops keys create`)",
                code="invalid_api_key"))
        # SQLite on the event loop, as the policy's forward passes are: a read of microseconds and a
        # charge of 0.2-0.4 ms (bench/keys.py). Awaiting them on a worker thread instead added
        # milliseconds to a request, the thread waiting for a core next to torch's OpenMP threads.
        key = self.keys.authenticate(secret.strip())
        if key is None:
            raise self._refuse("auth", ApiError(401, "incorrect or revoked API key", code="invalid_api_key"))
        if key.exhausted:
            raise self._refuse("quota", ApiError(
                429, f"API key {key.key_id!r} has spent ${key.spent_usd:.6f} of its ${key.budget_usd:.6f} budget",
                type_="insufficient_quota", code="insufficient_quota", headers={"x-should-retry": "false"}))
        return key

    def _export_batches(self) -> None:
        # The in-process policy counts its batches by size; the histogram gets what is new.
        batches: collections.Counter[int] | None = getattr(self.router.generator, "batches", None)
        if batches is None:
            return  # a completions server batches on its own side
        for size, n in batches.items():
            for _ in range(n - self._batches_seen[size]):
                self.metrics.batch_size.observe(size)
        self._batches_seen = collections.Counter(batches)

    def _models(self) -> set[str]:
        return {self.model_id, self.model_id.split(":", 1)[0]}

    # ----- endpoints --------------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        record = self.router.package.record
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "routerops",
                                            "created": 0, "routerops": {"version": record.version,
                                                                        "labels": record.labels}}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        status = 200
        try:
            return await self._chat(request)
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            self.metrics.requests.labels(status=str(status)).inc()
            self.metrics.latency.observe(time.perf_counter() - started)

    async def _chat(self, request: Request) -> Response:
        if self.draining:
            raise self._refuse("shutdown", ApiError(
                503, "the router is shutting down; retry on another replica", type_="server_error",
                code="service_unavailable", headers={"retry-after": str(args.retry_after_s), "x-should-retry": "true"}))
        key = await self._authenticate(request)
        if self.in_flight >= args.max_concurrency:
            raise self._refuse("overload", ApiError(
                429, f"the router is answering {self.in_flight} requests, its limit; retry after "
                     f"{args.retry_after_s} s", type_="rate_limit_error", code="rate_limit_exceeded",
                headers={"retry-after": str(args.retry_after_s), "x-should-retry": "true"}))
        self.in_flight += 1
        try:
            req = parse_chat_request(await request.body())
            if req.model not in self._models():
                raise self._refuse("model_not_found", ApiError(
                    404, f"the model {req.model!r} does not exist; this service serves {self.model_id!r}",
                    code="model_not_found", param="model"))
            question, ignored = req.question()
            max_usd = req.routerops.max_usd
            if key is not None and key.remaining_usd is not None:
                max_usd = key.remaining_usd if max_usd is None else min(max_usd, key.remaining_usd)
            completion_id = new_completion_id()
            episode_started = time.perf_counter()
            try:
                answer = await self.router.answer(question, request_id=completion_id, max_usd=max_usd,
                                                  route_to=req.routerops.route_to)
            except RequestError as exc:
                raise ApiError(400, exc.message, param=exc.param, code=exc.code) from None
            episode_ms = (time.perf_counter() - episode_started) * 1e3
        except ApiError as exc:
            if exc.status == 400:
                self.metrics.refusals.labels(reason="bad_request").inc()
            raise
        finally:
            self.in_flight -= 1
        self._export_batches()
        bill = answer.bill
        for line in bill.calls:
            self.metrics.calls.labels(model=line.model, outcome=line.outcome.value).inc()
            if line.usd:
                self.metrics.usd.labels(model=line.model).inc(line.usd)
        if key is not None and self.keys is not None:
            self.keys.charge(key.key_id, bill.total_usd)  # one UPDATE and its fsync (bench/keys.py: 0.2-0.4 ms)
            self.metrics.key_usd.labels(key_id=key.key_id).inc(bill.total_usd)
        # Server-Timing: how much of the latency a client sees was the episode; the rest is the service.
        headers = {"x-routerops-cost-usd": f"{bill.total_usd:.10f}", "x-routerops-router-version": bill.router_version,
                   "server-timing": f"episode;dur={episode_ms:.3f}"}
        failed = bill.candidate_failures
        if failed:
            first = failed[0]
            kind = first.failure.value if first.failure else "failed"
            raise self._refuse("candidate_failure", ApiError(
                502, f"candidate {first.model} failed during the episode ({kind}: {first.detail}); {len(failed)} of "
                     f"{len(bill.calls)} calls failed, the bill covers the calls made", type_="upstream_error",
                code=kind,
                headers=headers, extra={"routerops": {**bill.as_json(), "ignored_messages": ignored}}))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = sse_chunks(answer, model=self.model_id, ignored=ignored, completion_id=completion_id,
                                include_usage=include_usage)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        return JSONResponse(chat_completion(answer, model=self.model_id, ignored=ignored, completion_id=completion_id),
                            headers=headers)


# Registered after the service's routes (Starlette matches in order): any other /v1 path.
@app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def _unknown_path(path: str) -> JSONResponse:
    return JSONResponse(error_body(f"unknown endpoint /v1/{path}: this service serves /v1/chat/completions and "
                                   "/v1/models", code="unknown_url"), status_code=404)
