"""Owns the model, the KV pool and the attention backend; runs one batch per call:
forward, logits for the rows that need them, sampling, logprobs."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import time
from dataclasses import dataclass, field

import torch

from runtime.cache.kv_pool import KVPool, ReqToTokenTable
from runtime.components import ATTENTION_BACKENDS, load
from runtime.config import EngineConfig, ModelConfig, cpu_has_fast_bf16
from runtime.engine.forward_batch import ForwardMode
from runtime.engine.sampler import SamplingBatch, compute_logprobs, greedy_tokens, is_plain_greedy, sample
from runtime.engine.tensor_parallel import agree
from runtime.engine.verify import verify_drafts
from runtime.kernels import cpu_elementwise
from runtime.layers.linear import onednn_packing_available
from runtime.layers.parallel import SINGLE, TensorParallel
from runtime.layers.quant import set_kernel_max_rows
from runtime.models.loader import load_model

logger = logging.getLogger(__name__)

CPU_DEFAULT_MAX_TOTAL_TOKENS = 262_144


@dataclass
class StepResult:
    next_token_ids: list[int]  # per request in the batch (-1 where nothing was sampled)
    # per request index: [(logprob of the emitted token, top alternatives [(logprob, id)])],
    # one per emitted token
    output_logprobs: dict[int, list[tuple[float, list[tuple[float, int]]]]] = field(default_factory=dict)
    # verify steps: the tokens each request emits (accepted draft tokens + one more)
    emitted: list[list[int]] | None = None
    # per request index: [(logprob, prompt token id, top alternatives)] in position order
    prompt_logprobs: dict[int, list[tuple[float, int, list]]] = field(default_factory=dict)


def _keep_freed_memory() -> None:
    """Let glibc malloc reuse freed blocks of up to 32 MiB instead of mmap/munmap-ing
    each one: a decode step allocates the same large tensors (gathered KV, [B, V] logits)
    every step, and fresh mappings cost a page fault per 4 KiB (~2 ms per 32 MiB)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
    libc.mallopt(m_trim_threshold, 1 << 30)


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc), e.g. the float32 weights a
    quantized model was made from: with the trim threshold above they would stay resident."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ModelRunner:
    """tp: a worker rank's place in the tensor-parallel group (runtime/engine/tensor_parallel.py);
    None on the engine's own runner, which is rank 0 and starts the workers when tp_size > 1."""

    def __init__(self, cfg: EngineConfig, model_path: str, tp: TensorParallel | None = None) -> None:
        self.cfg = cfg
        self.device = cfg.resolved_device()
        if self.device == "cpu":  # the cores are shared among the ranks
            torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // cfg.tp_size))
            _keep_freed_memory()
        torch.manual_seed(cfg.random_seed)
        self.model_config = ModelConfig.from_hf(model_path)
        mc = self.model_config
        self.tp_workers = None  # rank 0 with tp_size > 1: TPWorkers
        if tp is None and cfg.tp_size > 1:
            from runtime.engine.tensor_parallel import TPWorkers, check_shardable

            check_shardable(mc, cfg.tp_size)  # before any worker starts
            self.tp_workers = TPWorkers(cfg, model_path, self.device)
            tp = self.tp_workers.tp
        self.tp = tp or SINGLE
        self.dtype = cfg.resolved_dtype(mc)
        if self.device == "cpu" and self.dtype == torch.bfloat16 and not cpu_has_fast_bf16():
            logger.warning("bfloat16 on a CPU without oneDNN's bf16 kernels (AVX512 / AVX-NE-CONVERT): matmuls are "
                           "emulated, several times slower than float32 (--dtype auto picks float32 here)")
        if cfg.quantization == cfg.lm_head_quantization == "none":
            self.model = load_model(model_path, mc, self.dtype, self.device, self.tp)
        else:
            self.model = self._load_quantized(model_path)
        self.model.elementwise = self._elementwise_kernels()
        if self._use_onednn():
            logger.info("%d linear layers reordered for oneDNN", self.model.pack_for_onednn())
        self.context_len = min(cfg.context_length or mc.max_position_embeddings, mc.max_position_embeddings)
        if mc.sliding_window:  # no sliding-window attention yet: stay inside the window
            self.context_len = min(self.context_len, mc.sliding_window)
        num_slots = agree(self._pool_size(), self.tp)  # rank 0's size: its allocator decides for all
        heads, kv_heads = self.tp.split(mc.num_heads, "attention heads"), self.tp.split(mc.num_kv_heads, "KV heads")
        self.pool = KVPool(mc.num_layers, num_slots, kv_heads, mc.head_dim, self.dtype,
                           self.device, cfg.page_size, int8=cfg.kv_cache_dtype == "int8")
        self.table = ReqToTokenTable(cfg.max_running_requests, self.context_len, self.device)
        backend = load(ATTENTION_BACKENDS, cfg.resolved_attention_backend(), "attention backend")
        self.attn = backend(self.pool, heads, kv_heads, mc.head_dim)
        self.decode_graphs = self._decode_graphs()
        if self.tp_workers is not None:
            self.tp_workers.wait_ready()
        self.forward_time = 0.0  # seconds spent in model forward + logits (for overhead stats)
        logger.info("model %s (%s) on %s, %s; KV pool %d tokens; context %d", mc.architecture,
                    model_path, self.device, self.dtype, self.pool.capacity, self.context_len)

    def _decode_graphs(self):
        """CUDA graphs for decode steps on CUDA with the triton backend (unless disabled);
        extra={"decode_graphs": "eager"} runs their static-buffer path uncaptured (CPU tests)."""
        eager = self.cfg.extra.get("decode_graphs") == "eager"
        # (not with tensor parallelism: its collectives run eagerly)
        wanted = self.tp.size == 1 and (eager or (self.device == "cuda" and not self.cfg.disable_cuda_graph))
        if not wanted or not self.cfg.resolved_attention_backend().startswith("triton"):
            return None
        from runtime.engine.cuda_graph import DecodeGraphs

        max_bs = min(self.cfg.cuda_graph_max_bs, self.cfg.max_running_requests)
        return DecodeGraphs(self.model, self.attn, max_bs, self.context_len, self.device, eager=eager)

    def _elementwise_kernels(self):
        """The fused element-wise ops the model runs: the Triton kernels on CUDA (and on CPU,
        interpreted, with extra={"fused_kernels": True}: tests), the C++ ones on CPU where they
        built, else None (eager torch ops; also with extra={"fused_kernels": False})."""
        choice = self.cfg.extra.get("fused_kernels")
        if self.device == "cuda" or choice is True:
            from runtime.kernels import elementwise

            return elementwise
        if self.device == "cpu" and choice is None and cpu_elementwise.available():
            return cpu_elementwise
        return None

    def _load_quantized(self, model_path: str):
        """Quantized from the checkpoint's float32 values (a GGUF's Q4_0/Q4_1 values are
        exact there, so int4 at group 32 gets back its blocks), then the rest is cast."""
        cfg = self.cfg
        methods = {cfg.quantization, cfg.lm_head_quantization} - {"none"}
        if self.device != "cpu" and methods != {"fp8"}:
            raise ValueError(f"--quantization int8/int4 runs on CPU only (its kernels are CPU ones; fp8 runs on "
                             f"CUDA); this engine is on {self.device}")
        if self.device == "cpu" and "fp8" in methods:
            logger.warning("fp8 on CPU runs torch's reference _scaled_mm loop, far slower than unquantized: "
                           "for tests; use int8 or int4 on CPU")
        model = load_model(model_path, self.model_config, torch.float32, self.device, self.tp)
        rounded = None
        if cfg.quantization_method == "gptq":
            from runtime.layers.gptq import gptq_int8_weights

            rounded = gptq_int8_weights(model_path, include_head=cfg.lm_head_quantization == "int8")
        count = model.quantize(cfg.quantization, cfg.quantization_group_size, cfg.lm_head_quantization, rounded)
        logger.info("%d linear layers quantized (%s; head %s; int8 rounding %s)", count, cfg.quantization,
                    cfg.lm_head_quantization, cfg.quantization_method)
        for param in model.parameters():  # embeddings, norms, biases (the rotary tables stay float32)
            param.data = param.data.to(self.dtype)
        # tests: one path for every step, so a token's bits do not depend on its step's rows (the kernels
        # and the dequantized path above KERNEL_MAX_ROWS sum in different orders)
        if "quantized_kernel_max_rows" in cfg.extra:
            set_kernel_max_rows(model, cfg.extra["quantized_kernel_max_rows"])
        gc.collect()
        _return_freed_memory()
        return model

    def _use_onednn(self) -> bool:
        available = onednn_packing_available(self.dtype, self.device)
        if self.cfg.cpu_linear == "onednn" and not available:
            raise ValueError(f"--cpu-linear onednn needs a CPU model with oneDNN, float32 or bf16 with oneDNN's bf16 "
                             f"kernels (got {self.dtype} on {self.device})")
        return available and self.cfg.cpu_linear != "torch"

    def _pool_size(self) -> int:
        if self.cfg.max_total_tokens:
            return self.cfg.max_total_tokens + self.cfg.page_size  # + the reserved padding page
        mc = self.model_config
        kv_heads = self.tp.split(mc.num_kv_heads, "KV heads")  # a rank holds its heads' KV only
        bytes_per_token = KVPool.bytes_per_token(mc.num_layers, kv_heads, mc.head_dim, self.dtype,
                                                 self.cfg.kv_cache_dtype == "int8")
        if self.device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            return int(free * self.cfg.mem_fraction) // bytes_per_token
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return min(int(free * self.cfg.mem_fraction) // bytes_per_token, CPU_DEFAULT_MAX_TOTAL_TOKENS)

    @torch.inference_mode()
    def run(self, batch) -> StepResult:
        fb = batch.forward
        # verify: every row scores a draft position; greedy-only decode: one row per request,
        # in order (no gather, no fp32 copy: the argmax of the model dtype is the same)
        all_rows = batch.mode == ForwardMode.VERIFY or self._greedy_only(batch)
        step = (fb, None if all_rows else fb.logits_indices, not all_rows)
        start = time.perf_counter()
        if self.tp_workers is not None:
            self.tp_workers.send_step(step)  # before any tensor moves to the device
        logits = self.forward_logits(*step)  # [T or B or N, V]
        self.forward_time += time.perf_counter() - start
        if batch.mode == ForwardMode.VERIFY:
            emitted, logprobs = verify_drafts(batch, logits, self._banned)
            return StepResult(next_token_ids=[t[-1] for t in emitted], output_logprobs=logprobs, emitted=emitted)
        if all_rows:
            return StepResult(next_token_ids=greedy_tokens(logits).tolist())
        return self._sample(batch, logits)  # logits [N, V] fp32

    @torch.inference_mode()
    def forward_logits(self, fb, rows: torch.Tensor | None, float32: bool) -> torch.Tensor:
        """The model over the batch, then the logits of hidden `rows` (None: every row), fp32
        or the model dtype. Every tensor-parallel rank runs this on the same step in lockstep."""
        fb.input_ids = fb.input_ids.to(self.device)
        fb.positions = fb.positions.to(self.device)
        fb.out_cache_loc = fb.out_cache_loc.to(self.device)
        fb.kv_indices = fb.kv_indices.to(self.device)
        if self.decode_graphs is not None and self.decode_graphs.can_run(fb):
            hidden = self.decode_graphs.run(fb)
        else:
            self.attn.init_forward_metadata(fb)
            hidden = self.model(fb.input_ids, fb.positions, fb, self.attn)
        if rows is not None:
            hidden = hidden.index_select(0, rows.to(self.device))
        return self.model.compute_logits(hidden, float32=float32)

    def close(self) -> None:
        """Stop the tensor-parallel workers (nothing to do without them)."""
        if self.tp_workers is not None:
            self.tp_workers.close()
            self.tp_workers = None

    def _greedy_only(self, batch) -> bool:
        """A decode step where every request takes the plain argmax: no grammar, no
        logprobs, no penalties, no banned tokens (the common case, kept cheap)."""
        return batch.mode == ForwardMode.DECODE and all(
            req.grammar is None and not req.options.return_logprob and is_plain_greedy(req.sampling_params)
            and not self._banned(req, len(req.output_ids)) for req in batch.reqs)

    def _sample(self, batch, logits: torch.Tensor) -> StepResult:
        result = StepResult(next_token_ids=[-1] * len(batch.reqs))
        sample_rows, sample_reqs, row = [], [], 0
        for i, req in enumerate(batch.reqs):
            n = batch.num_logits_rows[i]
            if batch.prompt_logprob_positions[i]:
                result.prompt_logprobs[i] = self._prompt_logprobs(
                    req, logits[row:row + len(batch.prompt_logprob_positions[i])],
                    batch.prompt_logprob_positions[i])
            if batch.samples[i]:
                sample_rows.append(row + n - 1)
                sample_reqs.append(i)
            row += n
        if not sample_rows:
            return result
        if sample_rows == list(range(len(logits))):
            rows = logits  # decode: every row samples, in order (no [B, V] copy)
        else:
            rows = logits.index_select(0, torch.tensor(sample_rows, device=logits.device))  # [B, V]
        reqs = [batch.reqs[i] for i in sample_reqs]
        want_lp = [j for j, r in enumerate(reqs) if r.options.return_logprob]
        # logprobs use the unprocessed logits (a copy: grammar masks edit rows in place)
        raw = rows.index_select(0, torch.tensor(want_lp, device=rows.device)) if want_lp else None
        if any(r.grammar is not None for r in reqs):
            self._apply_grammars(rows, reqs)
        params, banned = [r.sampling_params for r in reqs], [self._banned(r, len(r.output_ids)) for r in reqs]
        if all(map(is_plain_greedy, params)) and not any(banned):
            tokens = greedy_tokens(rows)  # the common case, without per-step parameter tensors
        else:
            sb = SamplingBatch.build(params, [r.output_ids for r in reqs], banned_token_ids=banned,
                                     prompt_ids=[r.origin_input_ids for r in reqs])
            tokens = sample(rows, sb)
        token_list = tokens.tolist()
        for j, i in enumerate(sample_reqs):
            result.next_token_ids[i] = token_list[j]
        if want_lp:
            top_n = max(reqs[j].options.top_logprobs_num for j in want_lp)
            lps, top_vals, top_ids = compute_logprobs(raw, tokens[want_lp], top_n)
            for k, j in enumerate(want_lp):
                n = reqs[j].options.top_logprobs_num
                top = list(zip(top_vals[k, :n].tolist(), top_ids[k, :n].tolist())) if n else []
                result.output_logprobs[sample_reqs[j]] = [(float(lps[k]), top)]
        return result

    def _apply_grammars(self, rows: torch.Tensor, reqs) -> None:
        """Mask each constrained row ([B, V] logits, in place) to what its grammar allows."""
        from runtime.constrained.bitmask import allocate_bitmask, apply_bitmask_

        bitmask = allocate_bitmask(len(reqs), rows.shape[1])  # all allowed by default
        for j, req in enumerate(reqs):
            if req.grammar is not None:
                req.grammar.fill_bitmask(bitmask, j)
        apply_bitmask_(rows, bitmask.to(rows.device))

    def _banned(self, req, num_output: int) -> list[int]:
        """Tokens that would end the request before min_new_tokens, when it has num_output."""
        sp = req.sampling_params
        if num_output >= sp.min_new_tokens or req.grammar is not None:
            return []  # a grammar decides where the output may end
        ids = list(sp.stop_token_ids or [])
        if not sp.ignore_eos:
            ids += self.model_config.eos_token_ids
        return ids

    @staticmethod
    def _prompt_logprobs(req, rows: torch.Tensor, positions: list[int]) -> list:
        targets = torch.tensor([req.origin_input_ids[p + 1] for p in positions], dtype=torch.int64)
        top_n = req.options.top_logprobs_num
        lps, top_vals, top_ids = compute_logprobs(rows, targets.to(rows.device), top_n)
        out = []
        for k, token in enumerate(targets.tolist()):
            top = list(zip(top_vals[k].tolist(), top_ids[k].tolist())) if top_n else []
            out.append((float(lps[k]), token, top))
        return out
