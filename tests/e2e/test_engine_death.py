"""A real server whose engine process is SIGKILLed mid-stream: the stream ends with an
error event then [DONE], the waiting request gets 503, new requests get 503 at once,
/health says 503, and SIGTERM still stops the server cleanly. With
--restart-engine-on-failure a new engine serves again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx

from tests.e2e.harness import MODEL, child_pids, start_server, stop_server

LONG = {"model": MODEL, "max_tokens": 1500, "ignore_eos": True, "temperature": 0}


def _engine_pid(server) -> int:
    [pid] = child_pids(server.proc.pid)
    return pid


def _kill_engine_mid_stream(server):
    """Starts a stream and a non-streaming request, SIGKILLs the engine after the first
    chunk; returns (stream lines, the other request's response, the kill time)."""
    other: dict = {}
    body = {**LONG, "messages": [{"role": "user", "content": "Hello"}]}
    worker = threading.Thread(target=lambda: other.update(r=httpx.post(
        f"{server.url}/v1/chat/completions", json=body, timeout=60)))
    lines = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as response:
        assert response.status_code == 200
        worker.start()
        killed = None
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if killed is None and len(lines) >= 3:
                time.sleep(0.2)  # the other request is in flight too
                os.kill(_engine_pid(server), signal.SIGKILL)
                killed = time.time()
    worker.join(30)
    return lines, other["r"], killed


def test_engine_killed_mid_stream():
    server = start_server()
    try:
        lines, other, killed = _kill_engine_mid_stream(server)
        assert time.time() - killed < 5
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2][len("data: "):])["error"]
        assert "the engine process stopped (killed by signal 9)" in error["message"]
        assert other.status_code == 503 and "engine process stopped" in other.json()["error"]["message"]
        start = time.time()
        r = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2},
                       timeout=10)
        assert r.status_code == 503 and time.time() - start < 1
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 503
        assert httpx.get(f"{server.url}/get_server_info", timeout=5).status_code == 503
    finally:
        start = time.time()
        stop_server(server)  # exits 0, frees the port, leaves no child
        assert time.time() - start < 10


def test_restart_engine_on_failure():
    server = start_server("--restart-engine-on-failure")
    try:
        first = _engine_pid(server)
        lines, other, _ = _kill_engine_mid_stream(server)
        assert lines[-1] == "data: [DONE]" and other.status_code == 503
        deadline = time.time() + 120
        while httpx.get(f"{server.url}/health", timeout=5).status_code != 200:
            assert time.time() < deadline, server.log()[-3000:]
            time.sleep(0.5)
        assert _engine_pid(server) != first
        r = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 4},
                       timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        assert "the engine is serving again" in server.log()
    finally:
        stop_server(server)
