"""E2E fixtures. Two real servers per session (each start costs ~10 s): `server` (open,
roomy limits) and `guarded_server` (--api-key, max_running 2 + max_queued 2, for the
401/503 tests). Both use the built-in tiny demo model and a 2048-token context."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.harness import API_KEY, start_server, stop_server


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_grammar: needs grammar-constrained decoding (runtime.constrained)")


@pytest.fixture(scope="session")
def server():
    srv = start_server("--max-running-requests", "64", "--max-queued-requests", "512")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def guarded_server():
    srv = start_server("--max-running-requests", "2", "--max-queued-requests", "2", api_key=API_KEY)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture()
def aclient(server):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c
