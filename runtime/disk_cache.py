"""Built-once artifacts under ${RADIXFLOW_CACHE_DIR:-~/.cache/radixflow}/{folder}/{name}/
(demo checkpoints, converted GGUF checkpoints), safe under concurrent callers."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("RADIXFLOW_CACHE_DIR") or os.path.join("~", ".cache", "radixflow")).expanduser()


def build_cached(folder: str, name: str, build: Callable[[Path], None]) -> Path:
    """Return cache_root()/folder/name, building it once with build(tmp_dir) if missing.

    A process builds into a private temp dir and renames it into place, under an
    exclusive fcntl lock so concurrent callers wait instead of duplicating work.
    Readers never see a partial directory: it exists only once complete.
    """
    root = cache_root() / folder
    final = root / name
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if final.is_dir():  # built by another process while we waited
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
            try:
                build(tmp)
                os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final
