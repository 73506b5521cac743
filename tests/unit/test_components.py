"""Every registered part loads, and an unknown name is refused with the choices."""

import pytest

from runtime import components
from runtime.components import ATTENTION_BACKENDS, GRAMMAR_BACKENDS, PREFIX_CACHES, SCHEDULE_POLICIES, load
from runtime.config import EngineConfig

TABLES = {"schedule policy": SCHEDULE_POLICIES, "prefix cache": PREFIX_CACHES,
          "attention backend": ATTENTION_BACKENDS, "grammar backend": GRAMMAR_BACKENDS}


@pytest.mark.parametrize("what, name", [(what, name) for what, table in TABLES.items() for name in table])
def test_every_entry_loads(what, name):
    assert callable(load(TABLES[what], name, what))


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown prefix cache 'lru'; available: \['none', 'radix'\]"):
        load(PREFIX_CACHES, "lru", "prefix cache")
    with pytest.raises(ValueError, match="schedule_policy must be one of"):
        EngineConfig(schedule_policy="random")


def test_a_broken_entry_fails_loudly(monkeypatch):
    monkeypatch.setitem(components.PREFIX_CACHES, "radix", "runtime.cache.no_such_module:RadixCache")
    with pytest.raises(ImportError):
        load(components.PREFIX_CACHES, "radix", "prefix cache")


def test_attention_backend_auto_is_triton_on_cuda_only(monkeypatch):
    assert EngineConfig(device="cpu").resolved_attention_backend() == "torch_native"
    assert EngineConfig(device="cuda").resolved_attention_backend() == "triton"
    assert EngineConfig(device="cuda", kv_cache_dtype="int8").resolved_attention_backend() == "torch_native"
    assert EngineConfig(device="cuda", attention_backend="torch_native").resolved_attention_backend() == "torch_native"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert EngineConfig().resolved_attention_backend() == "triton"
