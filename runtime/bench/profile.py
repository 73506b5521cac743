"""Where the engine's time goes while a benchmark runs: py-spy samples the engine process
(`python -m runtime.engine.process`) and the samples are folded into proportions per
function (self time: the innermost frame of our code) and per stage of a step."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

# a sample's stage: the first of these (most specific first) that appears in its stack
STAGES = (("sampler", "runtime/engine/sampler.py"), ("grammar masks", "runtime/constrained/"),
          ("attention", "runtime/layers/attention.py"), ("model forward", "runtime/models/"),
          ("batch building", "runtime/engine/batch_builder.py"), ("model runner", "runtime/engine/model_runner.py"),
          ("scheduler", "runtime/engine/scheduler.py"), ("IPC / loop", "runtime/engine/engine_loop.py"))
OUTSIDE_MODEL = ("batch building", "scheduler", "IPC / loop")  # the stages that are not the model's own work


def engine_pid(server_pid: int) -> int | None:
    import psutil

    for child in psutil.Process(server_pid).children(recursive=True):
        if "runtime.engine.process" in " ".join(child.cmdline()):
            return child.pid
    return None


class Profiler:
    """py-spy record on `pid` from start() to stop(); `summary()` after stop."""

    def __init__(self, pid: int, out: Path, rate: int = 50) -> None:
        self.pid, self.out, self.rate = pid, out, rate
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Profiler":
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.proc = subprocess.Popen([py_spy, "record", "-p", str(self.pid), "-r", str(self.rate), "--format",
                                      "raw", "-o", str(self.out), "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # attached
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)

    def summary(self, top: int = 15) -> dict:
        return fold(self.out.read_text() if self.out.exists() else "", top)


def fold(collapsed: str, top: int = 15) -> dict:
    """py-spy's raw (collapsed) stacks -> {"samples", "stages": {stage: share},
    "functions": [(function, share)]}; idle samples (waiting on the connection) are counted
    apart."""
    stages: Counter = Counter()
    functions: Counter = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if any("poll" in f and "connection.py" in f for f in frames[-3:]):
            idle += n
            continue
        total += n
        stage = next((name for name, path in STAGES if any(path in f for f in frames)), "other")
        stages[stage] += n
        ours = [f for f in frames if "runtime/" in f]
        functions[(ours[-1] if ours else frames[-1]).split(" (")[0]] += n
    share = (lambda n: round(n / total, 4)) if total else (lambda n: 0.0)
    return {"busy_samples": total, "idle_samples": idle,
            "stages": {k: share(v) for k, v in stages.most_common()},
            "functions": [(k, share(v)) for k, v in functions.most_common(top)]}
