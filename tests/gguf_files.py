"""GGUF files for tests: checkpoints written as llama.cpp lays them out (runtime's
writer), and bare files with one tensor for the loader's error paths."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from runtime.models.gguf_writer import llama_cpp_permute, write_gguf_from_checkpoint  # noqa: F401 (re-export)


def write_bare_gguf(out_file: Path, arch: str) -> Path:
    """A GGUF of architecture `arch` holding one small F32 tensor and no other metadata."""
    writer = gguf.GGUFWriter(str(out_file), arch)
    writer.add_tensor("output.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file
