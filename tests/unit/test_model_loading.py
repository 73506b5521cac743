"""Checkpoint loading: sharded safetensors with an index, tied embeddings, clear errors."""

import json
import shutil

import pytest
import torch

from runtime.config import EngineConfig, ModelConfig
from runtime.demo.checkpoint import demo_model_path
from runtime.models.loader import load_model


def test_sharded_checkpoint_loads_identically(tmp_path):
    from transformers import AutoModelForCausalLM

    src = demo_model_path("qwen2", "tiny", "float32")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="20MB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    cfg = ModelConfig.from_hf(tmp_path)
    assert cfg.tie_word_embeddings  # Qwen2.5-0.5B style
    sharded = load_model(tmp_path, cfg, torch.float32, "cpu")
    single = load_model(src, ModelConfig.from_hf(src), torch.float32, "cpu")
    for (name, a), (_, b) in zip(sharded.state_dict().items(), single.state_dict().items()):
        assert torch.equal(a, b), name


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    src = demo_model_path("qwen2", "tiny", "float32")
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'.*Qwen2ForCausalLM"):
        load_model(tmp_path, ModelConfig.from_hf(tmp_path), torch.float32, "cpu")


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ValueError, match="config.json not found"):
        ModelConfig.from_hf(tmp_path)


def test_llama3_rope_scaling_is_read():
    cfg = ModelConfig.from_hf(demo_model_path("llama", "tiny", "float32"))
    assert cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "llama3"
    assert ModelConfig.from_hf(demo_model_path("qwen3", "tiny", "float32")).head_dim == 64


@pytest.mark.parametrize("options, message", [
    ({"dtype": "float64"}, "dtype"),
    ({"page_size": 0}, "page_size"),
    ({"schedule_policy": "random"}, "schedule_policy"),
])
def test_bad_engine_options(options, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_options(**options)
    with pytest.raises(ValueError, match="unknown engine option"):
        EngineConfig.from_options(max_tokens=5)
