"""Start a server process on 127.0.0.1, wait until it answers, measure it, stop it by PID.
Used for `radixflow bench serve --launch` and for the peers of `bench compare`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from runtime.engine.process import free_port  # noqa: F401 - used here and by peers.py


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    startup_s: float = 0.0
    info: dict = field(default_factory=dict)

    def resident_mb(self) -> float:
        """Resident memory of the server and its children (the engine process), MiB."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
        except psutil.NoSuchProcess:
            return float("nan")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start(name: str, cmd: list[str], port: int, ready_path: str = "/v1/models", timeout_s: float = 600.0,
          env: dict | None = None, log_dir: str | Path | None = None) -> Server:
    """Run `cmd` (it must listen on `port`) in its own process group; return once
    GET `ready_path` answers 200. Raises RuntimeError with the log's tail if it exits first."""
    log_path = Path(log_dir or "/tmp") / f"radixflow-bench-{name}-{port}.log"
    log = open(log_path, "w")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    server = Server(name, f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready:\n{tail(log_path)}")
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                server.startup_s = time.perf_counter() - started
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{name} was not ready within {timeout_s:.0f} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def radixflow_command(port: int, model_path: str | None, extra_args: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "runtime.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if model_path:
        cmd += ["--model-path", model_path]
    return cmd + list(extra_args)


def start_radixflow(model_path: str | None, extra_args: list[str] = (), **kwargs) -> Server:
    port = free_port()
    return start("radixflow", radixflow_command(port, model_path, list(extra_args)), port,
                 ready_path="/health", **kwargs)
