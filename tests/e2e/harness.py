"""Running real `radixflow serve` subprocesses (`python -m runtime.cli serve`) for the
e2e tests: start on a free port and wait for /health; stop with SIGTERM and check
that the server exited 0, left no child process, and freed its port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240
API_KEY = "test-key-123"
MODEL = "radixflow-demo"  # the demo model's served name


def grammar_available() -> bool:
    """runtime.constrained is a real package (not the empty placeholder folder)."""
    try:
        import runtime.constrained as constrained
    except ImportError:
        return False
    return getattr(constrained, "__file__", None) is not None


def require_grammar() -> None:
    if not grammar_available():
        pytest.skip("grammar-constrained decoding (runtime.constrained) has not landed yet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def child_pids(pid: int) -> set[int]:
    """Direct children of `pid` (Linux /proc; empty elsewhere)."""
    out = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.add(int(entry.name))
    return out


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class ServerProc:
    proc: subprocess.Popen
    port: int
    log_path: Path
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def info(self) -> dict:
        r = httpx.get(f"{self.url}/get_server_info", headers=self.headers, timeout=60)
        r.raise_for_status()
        return r.json()

    def wait_idle(self, timeout: float = 60.0) -> dict:
        """Wait until the engine runs nothing; returns its info."""
        deadline = time.time() + timeout
        while True:
            info = self.info()
            if info["running"] == 0 and info["waiting"] == 0 and info["in_flight_requests"] == 0:
                return info
            if time.time() > deadline:
                raise AssertionError(f"server not idle after {timeout}s: {info}")
            time.sleep(0.2)


def demo_model_args() -> list[str]:
    """The random-weight demo model (the default model is SmolLM2 when installed)."""
    from runtime.demo.checkpoint import demo_model_path

    return ["--model-path", str(demo_model_path()), "--served-model-name", MODEL]


def start_server(*extra: str, api_key: str | None = None, model_args: list[str] | None = None) -> ServerProc:
    """`radixflow serve` on `model_args` (default: the demo model) with `extra` flags."""
    model_args = demo_model_args() if model_args is None else model_args
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix=f"radixflow-serve-{port}-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "runtime.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-total-tokens", "24576", "--context-length", "2048", *model_args, *extra]
    if api_key:
        cmd += ["--api-key", api_key]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    server = ServerProc(proc, port, log_path, api_key)
    deadline = time.time() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during start:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            stop_server(server, check=False)
            raise RuntimeError(f"server not healthy after {START_TIMEOUT_S}s:\n{server.log()[-4000:]}")
        time.sleep(0.25)


def stop_server(server: ServerProc, check: bool = True) -> None:
    children = child_pids(server.proc.pid)
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        raise AssertionError(f"server did not exit within 60 s of SIGTERM:\n{server.log()[-3000:]}")
    if not check:
        return
    deadline = time.time() + 10
    while any(pid_alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.1)
    orphans = [p for p in children if pid_alive(p)]
    for p in orphans:
        os.kill(p, signal.SIGKILL)
    assert code == 0, f"server exited with {code}:\n{server.log()[-3000:]}"
    assert not orphans, f"engine/child processes {orphans} outlived the server"
    assert port_is_free(server.port), f"port {server.port} still bound after shutdown"


