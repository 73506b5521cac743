"""outlines-core `Index`es built in child processes, so that a compile can be stopped.

Indexing a JSON-schema regex over a 151k vocabulary walks every token through the
DFA in one Rust call: seconds to minutes. In a thread that call cannot be interrupted,
so a timed-out compile would keep a core busy to its end. The outlines backend runs it
here instead and kills this process when a compile runs past its time limit.

`IndexWorkers` (parent side) keeps idle children for reuse. A child runs this file as a
script, importing only the standard library and outlines_core (starting it costs
about a second). Messages are length-prefixed pickles over the child's stdin/stdout
(outlines-core pickles an Index as its binary form):
    parent -> child: (eos_id, {token bytes: [token ids]}) once, then one regex per request
    child -> parent: ("ok", Index) or ("error", message) per request
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time

_HEADER = struct.Struct("<Q")  # payload length in bytes


def send(stream, obj) -> None:
    send_pickled(stream, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def send_pickled(stream, data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def recv(stream):
    """The next message; EOFError when the other side closed the pipe."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("pipe closed")
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("pipe closed mid-message")
    return pickle.loads(data)


class IndexTimeout(Exception):
    """The build ran past its time limit; its child process was killed."""


class IndexWorkers:
    """Builds Indexes in child processes: one per concurrent build, reused while idle."""

    def __init__(self, eos_id: int, by_bytes: dict[bytes, list[int]]) -> None:
        self._setup = pickle.dumps((eos_id, by_bytes), protocol=pickle.HIGHEST_PROTOCOL)
        self._lock = threading.Lock()
        self._idle = [_Child(self._setup)]  # starts while the caller does other work

    def build(self, regex: str, timeout: float | None):
        """The Index for `regex`. Raises IndexTimeout after `timeout` seconds (None: no
        limit), RuntimeError for a regex outlines rejects or a child that died."""
        child = self._take()
        try:
            status, value = child.request(regex, timeout)
        except BaseException:
            child.kill()
            raise
        with self._lock:
            self._idle.append(child)
        if status == "error":
            raise RuntimeError(value)
        return value

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.kill()

    def _take(self) -> _Child:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.proc.poll() is None:
                    return child
                child.kill()  # exited on its own: release its pipes
        return _Child(self._setup)


class _Child:
    def __init__(self, setup: bytes) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        # the vocabulary (a few MB) is written while the child starts, not by the caller
        self._setup = threading.Thread(target=_send_setup, args=(self.proc.stdin, setup), daemon=True)
        self._setup.start()

    def request(self, regex: str, timeout: float | None) -> tuple[str, object]:
        self._setup.join()
        try:
            send(self.proc.stdin, regex)
            if not select.select([self.proc.stdout], [], [], timeout)[0]:
                raise IndexTimeout(f"no index after {timeout}s")
            return recv(self.proc.stdout)
        except (EOFError, OSError):
            self.proc.wait()
            raise RuntimeError(f"the outlines index process died (exit code {self.proc.returncode})") from None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


def _send_setup(stream, setup: bytes) -> None:
    try:
        send_pickled(stream, setup)
    except (OSError, ValueError):  # the child died or was killed; its request reports it
        pass


# ---------------------------------------------------------------------- child side


def _exit_with_parent(parent_pid: int) -> None:
    """Never outlive the parent, even in the middle of a long index build."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    import outlines_core as oc

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")  # the protocol's own copy of fd 1 ...
    os.dup2(2, 1)  # ... so that anything printed goes to stderr, not into the protocol
    try:
        eos_id, by_bytes = recv(stdin)
        vocabulary = oc.Vocabulary(eos_id, by_bytes)
        while True:
            regex = recv(stdin)
            try:
                reply = ("ok", oc.Index(regex, vocabulary))
            except Exception as e:  # a regex outlines cannot index: the parent reports it
                reply = ("error", f"{type(e).__name__}: {e}")
            send(stdout, reply)
    except (EOFError, BrokenPipeError):
        return  # the parent closed the pipe: done


if __name__ == "__main__":
    main()
