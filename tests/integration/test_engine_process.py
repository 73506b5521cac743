"""The process boundary: a plain script (no main guard) runs; a killed or crashing engine
process ends every pending request with an error at once and refuses new ones; a step
that raises fails only the requests it held (test hooks: RADIXFLOW_TEST_HOOKS=1)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import runtime
from runtime.core import EngineDeadError
from runtime.demo.checkpoint import demo_model_path

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_offline_example_runs_as_a_plain_script(tmp_path):
    """Saved as a file and run with `python file.py`: module-level Engine, no main guard."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Offline API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "with runtime.Engine() as engine:" in code and "__main__" not in code
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Paris" in proc.stdout and "finish_reason" in proc.stdout


@pytest.fixture
def hooked_engine(monkeypatch):
    monkeypatch.setenv("RADIXFLOW_TEST_HOOKS", "1")  # the child inherits it
    engine = runtime.Engine(str(demo_model_path("qwen2", "tiny", "float32")), max_total_tokens=4096)
    yield engine
    engine.shutdown()


LONG = {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0}


@pytest.mark.parametrize("how", ["sigkill", "crash_hook"])
def test_engine_death_fails_pending_requests_at_once_and_refuses_new_ones(hooked_engine, how):
    engine = hooked_engine
    results: list = []
    waiter = threading.Thread(target=lambda: results.append(engine.generate("Hello", LONG)))
    waiter.start()
    stream = engine.generate("Once upon a time", LONG, stream=True)
    next(stream)  # decoding has started
    killed = time.time()
    if how == "sigkill":
        os.kill(engine._process.pid, signal.SIGKILL)
    else:
        engine.inject_fault("crash_engine")
    chunks = list(stream)  # the stream ends instead of hanging
    waiter.join(10)
    assert time.time() - killed < 3 and not waiter.is_alive()
    reason = chunks[-1]["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and "the engine process stopped" in reason["message"]
    assert ("killed by signal 9" if how == "sigkill" else "exit code 70") in reason["message"]
    assert results[0]["meta_info"]["finish_reason"]["type"] == "abort"
    assert not engine.is_alive()
    start = time.time()
    with pytest.raises(EngineDeadError, match="the engine process stopped"):
        engine.generate("new", {"max_new_tokens": 2})
    with pytest.raises(EngineDeadError):
        engine.get_server_info()
    assert time.time() - start < 1
    engine.shutdown()  # still clean


def test_a_failing_step_ends_its_requests_with_an_error_and_the_engine_goes_on(hooked_engine):
    engine = hooked_engine
    stream = engine.generate("Once upon a time", LONG, stream=True)
    next(stream)
    engine.inject_fault("fail_next_step")
    reason = list(stream)[-1]["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and reason["message"].startswith("internal error: RuntimeError: injected fault")
    out = engine.generate("Hello", {"max_new_tokens": 4, "temperature": 0})  # the engine serves on
    assert out["meta_info"]["finish_reason"]["type"] == "length" and engine.is_alive()
    engine.check_no_leaks()
