"""The router service's front door on the stack's fixed port: a reverse proxy to the backend
(`bentoml serve` of one router version) that serves now, switchable without a failed request.

`python -m infra.local.front --port P --upstream URL --version V` (the stack starts it). Every
request goes to the current upstream, streamed both ways (server-sent events included). `POST
/-/switch {"upstream", "version"}` sends every request that arrives from then on to the new
upstream and answers once the requests already in flight on the old one have finished (at most
`drain_s`), with how many it waited for: the old backend can then stop without cutting any.
`GET /-/upstream` says where requests go, with the in-flight counts. Each response carries
`x-routerops-upstream-version`: the version that answered it.

No retry here: a backend that cannot be reached is a 502 with an OpenAI-shaped error body, and
the client's own retry layer decides. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["VERSION_HEADER", "Front", "main", "make_app"]

VERSION_HEADER = "x-routerops-upstream-version"
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones httpx recomputes.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass
class Front:
    upstream: str
    version: str
    drain_s: float = 300.0
    in_flight: collections.Counter[str] = field(default_factory=collections.Counter)
    _idle: dict[str, asyncio.Event] = field(default_factory=dict)

    def _enter(self, upstream: str) -> None:
        self.in_flight[upstream] += 1
        self._idle.setdefault(upstream, asyncio.Event()).clear()

    def _leave(self, upstream: str) -> None:
        self.in_flight[upstream] -= 1
        if self.in_flight[upstream] <= 0:
            del self.in_flight[upstream]
            self._idle.setdefault(upstream, asyncio.Event()).set()

    async def switch(self, upstream: str, version: str) -> dict[str, Any]:
        old, waited = self.upstream, self.in_flight.get(self.upstream, 0)
        self.upstream, self.version = upstream, version
        drained = True
        if old != upstream and waited:
            try:
                await asyncio.wait_for(self._idle[old].wait(), timeout=self.drain_s)
            except TimeoutError:
                drained = False
        return {"upstream": upstream, "version": version, "previous": old, "waited_for": waited,
                "drained": drained, "still_in_flight": self.in_flight.get(old, 0) if old != upstream else 0}


def make_app(front: Front, client: httpx.AsyncClient) -> Starlette:
    async def proxy(request: Request) -> Response:
        upstream, version = front.upstream, front.version
        front._enter(upstream)
        try:
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
            req = client.build_request(request.method, f"{upstream}{request.url.path}",
                                       params=request.url.query, headers=headers, content=await request.body())
            resp = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            front._leave(upstream)
            return JSONResponse({"error": {"message": f"the router backend {version} at {upstream} cannot be "
                                                      f"reached: {type(exc).__name__}", "type": "server_error",
                                           "param": None, "code": "backend_unavailable"}},
                                status_code=502, headers={VERSION_HEADER: version})

        async def body() -> AsyncIterator[bytes]:
            async for chunk in resp.aiter_raw():
                yield chunk

        async def done() -> None:
            await resp.aclose()
            front._leave(upstream)

        out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
        out[VERSION_HEADER] = version
        return StreamingResponse(body(), status_code=resp.status_code, headers=out, background=BackgroundTask(done))

    async def switch(request: Request) -> Response:
        try:
            spec = await request.json()
            upstream, version = str(spec["upstream"]).rstrip("/"), str(spec["version"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"upstream": URL, "version": V}'}, status_code=400)
        return JSONResponse(await front.switch(upstream, version))

    async def where(_: Request) -> Response:
        return JSONResponse({"upstream": front.upstream, "version": front.version, "in_flight": dict(front.in_flight)})

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/-/switch", switch, methods=["POST"]), Route("/-/upstream", where),
                             Route("/{path:path}", proxy, methods=methods)])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m infra.local.front", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--drain-s", type=float, default=300.0)
    ap.add_argument("--timeout-s", type=float, default=300.0, help="longest a backend may take to answer")
    args = ap.parse_args(argv)
    front = Front(args.upstream.rstrip("/"), args.version, args.drain_s)
    client = httpx.AsyncClient(timeout=httpx.Timeout(args.timeout_s, connect=5.0),
                               limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
    uvicorn.run(make_app(front, client), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=int(args.drain_s))


if __name__ == "__main__":
    main()
