"""The engine child process and the socket to it.

The child is `python -m runtime.engine.process ADDRESS`: its own entry point, so it never
re-imports the caller's `__main__` (a plain script that builds an `Engine` at module
level just works, unlike a multiprocessing `spawn` child). Parent and child talk over one
authenticated `multiprocessing.connection` socket of pickled `runtime.core` dataclasses:
  parent -> child: the (EngineConfig, model path) to load, then GenerateRequest (or a
                   list of them, submitted together) | AbortRequest | a Control message;
  child -> parent: EngineReady | EngineFailed, then lists of TokenOut / ControlReply.
When either side dies the other's `recv` raises EOFError at once (the kernel closes the
socket), which is how the parent notices a killed engine and the child an orphaned one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client, Connection, Listener

from runtime.core import EngineDeadError, Shutdown

AUTHKEY_ENV = "RADIXFLOW_ENGINE_AUTHKEY"
FAMILY = "AF_UNIX" if hasattr(socket, "AF_UNIX") else "AF_INET"
CONNECT_TIMEOUT_S = 60


class EngineProcess:
    """The parent's handle: start, send, receive, stop. `send` may be called from any
    thread; `recv` from one reader thread."""

    def __init__(self, cfg, model_path: str) -> None:
        self.proc, self.conn = start_child("runtime.engine.process")
        self._send_lock = threading.Lock()
        self.send((cfg, model_path))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_alive(self) -> bool:
        return self.proc.poll() is None


    def send(self, msg) -> None:
        try:
            with self._send_lock:
                self.conn.send(msg)
        except (OSError, ValueError) as e:  # BrokenPipe, or the connection was closed
            raise EngineDeadError(f"the engine process stopped ({self.exit_reason()})") from e

    def recv(self, timeout: float | None = None):
        """The next message; None after `timeout` s without one. EOFError once the child is gone."""
        if timeout is not None and not self.conn.poll(timeout):
            return None
        return self.conn.recv()

    def exit_reason(self, wait_s: float = 1.0) -> str:
        """How the child ended ("killed by signal 9", "exit code 1"), after waiting up to
        `wait_s` for the kernel to report it."""
        try:
            code = self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return "it is still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to stop; terminate, then kill, if it does not."""
        if self.is_alive():
            try:
                self.send(Shutdown())
            except EngineDeadError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.conn.close()


def start_child(module: str) -> tuple[subprocess.Popen, Connection]:
    """`python -m module ADDRESS`, and the authenticated connection it opens back to us
    (the child calls `connect_to_parent`)."""
    authkey = os.urandom(32)
    listener = Listener(family=FAMILY, authkey=authkey)
    env = {**os.environ, AUTHKEY_ENV: authkey.hex()}
    proc = subprocess.Popen([sys.executable, "-m", module, _address_arg(listener)], env=env)
    try:
        return proc, _accept(listener, proc)
    finally:
        listener.close()


def connect_to_parent() -> Connection:
    """In a child started by `start_child`: its connection to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us in order
    authkey = bytes.fromhex(os.environ.pop(AUTHKEY_ENV))
    address = sys.argv[1]
    if FAMILY == "AF_INET":
        host, port = address.rsplit(":", 1)
        address = (host, int(port))
    return Client(address, family=FAMILY, authkey=authkey)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accept(listener: Listener, proc: subprocess.Popen) -> Connection:
    """The child's connection; an error if it exits (or hangs) before connecting."""
    result: dict = {}

    def accept() -> None:
        try:
            result["conn"] = listener.accept()
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=accept, daemon=True, name="radixflow-engine-accept")
    thread.start()
    deadline = time.time() + CONNECT_TIMEOUT_S
    while thread.is_alive():
        thread.join(0.1)
        if thread.is_alive() and (proc.poll() is not None or time.time() > deadline):
            proc.kill()
            raise RuntimeError(f"the engine process did not connect (exit code {proc.wait()})")
    if "error" in result:
        proc.kill()
        raise RuntimeError(f"the engine process did not connect: {result['error']}")
    return result["conn"]


def _address_arg(listener: Listener) -> str:
    address = listener.address
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


def main() -> None:
    from runtime.engine.engine_loop import run_engine_process

    conn = connect_to_parent()
    cfg, model_path = conn.recv()
    run_engine_process(cfg, model_path, conn)


if __name__ == "__main__":
    main()
