"""The C++ CPU kernels (csrc/*.cpp), compiled on first use with this machine's compiler and
cached by torch under ~/.cache/torch_extensions; their ops live under torch.ops.radixflow:

  paged_attention.cpp  decode attention read straight from the KV pool's slots (cpu_attention.py)
  quant_linear.cpp     int8 / int4 weight-only linear layers, float32 activations
                       (runtime/layers/quant.py; only where the CPU has AVX2 and FMA)
  dequantize.cpp       their weights dequantized in one pass (a prefill chunk's matmul)
  elementwise.cpp      add + RMSNorm and rotary, in place (cpu_elementwise.py)
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
SOURCES = sorted(Path(__file__).with_name("csrc").glob("*.cpp"))


@functools.cache
def extension():
    """torch.ops.radixflow, or None where the kernels cannot be built (no compiler, no ninja,
    or RADIXFLOW_CPU_KERNELS=0): callers then keep their torch paths. Built once per process."""
    if os.environ.get("RADIXFLOW_CPU_KERNELS", "1") == "0":
        return None
    try:
        import ninja  # torch runs the `ninja` program: put the package's on PATH (an unactivated venv)
        from torch.utils.cpp_extension import load

        if not shutil.which("ninja"):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        load(name="radixflow_cpu_kernels", sources=[str(s) for s in SOURCES], is_python_module=False,
             extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
        return torch.ops.radixflow
    except Exception as e:  # a missing compiler or ninja: the torch paths still work
        logger.warning("CPU kernels unavailable (%s): using the torch paths", e)
        return None


def has_op(name: str) -> bool:
    """Whether the built extension registered op `name` (some need CPU features)."""
    ops = extension()
    return ops is not None and hasattr(ops, name)
