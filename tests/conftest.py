"""Shared pytest fixtures (demo checkpoint + its real Qwen2.5 tokenizer)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels (runtime/kernels) run under its interpreter on CPU;
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when a kernel is defined, so before any import


@pytest.fixture(scope="session")
def tiny_model_path():
    """Cached random-weight qwen2 tiny fp32 checkpoint (built on first use, ~5 s)."""
    from runtime.demo.checkpoint import demo_model_path

    return demo_model_path("qwen2", "tiny", "float32")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    """The demo checkpoint's tokenizer (a real Qwen2.5 tokenizer), loaded once."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="session", autouse=True)
def cpu_kernels_built():
    """Compile the CPU kernels once, in this process, before any test starts a server: the
    servers then load the cached build instead of compiling side by side."""
    from runtime.kernels import cpu_extension

    cpu_extension.extension()
