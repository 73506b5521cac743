"""Tensor parallelism across processes (`--tp-size N`): torch.distributed, gloo on CPU and
NCCL on CUDA.

Rank 0 is the engine process: the one scheduler, the radix cache, the grammars and the
sampler live there only. Ranks 1..N-1 are worker processes (`python -m
runtime.engine.tensor_parallel ADDRESS`, started by rank 0 before it loads its own shard)
holding their shard of the weights and of the KV pool (their KV heads, the same slots as
rank 0's pool: rank 0's allocator decides for all). Each step:
  control plane: rank 0 sends the step (ForwardBatch on CPU, logits rows, dtype) to every
                 worker over its connection (pickled, as the engine's own messages are);
  data plane:    every rank runs the same forward, the activations meeting in collectives
                 (runtime/layers/parallel.py: all_reduce after o_proj / down_proj / the
                 embedding, all_gather of the logits).
A worker stops when rank 0 says so (None) or when its connection closes (rank 0 died).
"""

from __future__ import annotations

import datetime
import logging
import pickle

import torch
import torch.distributed as dist

from runtime.engine.process import connect_to_parent, free_port, start_child
from runtime.layers.parallel import TensorParallel

# a collective that waits longer than this fails (a rank stuck or gone); loading counts
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def join_group(rank: int, size: int, init_method: str, device: str) -> TensorParallel:
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=init_method,
                            rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
    return TensorParallel(rank, size)


def check_shardable(mc, size: int) -> None:
    """A clear error when `size` ranks cannot share this model's heads and MLP columns."""
    tp = TensorParallel(0, size)
    tp.split(mc.num_heads, "attention heads")
    tp.split(mc.num_kv_heads, "KV heads")
    tp.split(mc.intermediate_size, "MLP columns (intermediate_size)")


def agree(value: int, tp: TensorParallel) -> int:
    """Rank 0's value on every rank (e.g. the KV pool's size: each rank measures its own
    free memory, but the slots must be the same)."""
    if tp.size == 1:
        return value
    box = torch.tensor([value], dtype=torch.int64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(box, src=0)
    return int(box.item())


class TPWorkers:
    """Rank 0's handle on ranks 1..N-1."""

    def __init__(self, cfg, model_path: str, device: str) -> None:
        if device == "cuda" and torch.cuda.device_count() < cfg.tp_size:
            raise ValueError(f"--tp-size {cfg.tp_size} needs {cfg.tp_size} GPUs; "
                             f"{torch.cuda.device_count()} visible")
        init_method = f"tcp://127.0.0.1:{free_port()}"
        self.children = []
        for rank in range(1, cfg.tp_size):
            proc, conn = start_child("runtime.engine.tensor_parallel")
            conn.send((cfg, model_path, rank, init_method))
            self.children.append((proc, conn))
        self.tp = join_group(0, cfg.tp_size, init_method, device)

    def wait_ready(self) -> None:
        """After rank 0 loaded: each worker says it loaded too, or why it could not."""
        for rank, (proc, conn) in enumerate(self.children, start=1):
            try:
                reply = conn.recv()
            except EOFError:
                reply = f"exited with code {proc.wait()}"
            if reply != "ready":
                self.close()
                raise RuntimeError(f"tensor-parallel rank {rank} failed to start: {reply}")

    def send_step(self, step) -> None:
        # plain pickle (tensors by value): Connection.send would share CPU tensors through
        # torch's file-descriptor passing, which needs a multiprocessing parent
        data = pickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL)
        for rank, (proc, conn) in enumerate(self.children, start=1):
            try:
                conn.send_bytes(data)
            except OSError as e:  # the worker died: rank 0 must not wait for it in a collective
                raise RuntimeError(f"tensor-parallel rank {rank} is gone ({e})") from e

    def close(self) -> None:
        for proc, conn in self.children:
            try:
                conn.send_bytes(pickle.dumps(None))
            except OSError:
                pass
        for proc, conn in self.children:
            try:
                proc.wait(10)
            except Exception:  # noqa: BLE001 - stuck: kill it
                proc.kill()
            conn.close()
        self.children = []
        if dist.is_initialized():
            dist.destroy_process_group()


def main() -> None:
    """A worker rank: load the shard, then run each step rank 0 sends until told to stop."""
    from runtime.engine.model_runner import ModelRunner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s tp-worker %(levelname)s %(message)s")
    conn = connect_to_parent()
    cfg, model_path, rank, init_method = conn.recv()
    try:
        tp = join_group(rank, cfg.tp_size, init_method, cfg.resolved_device())
        runner = ModelRunner(cfg, model_path, tp=tp)
    except Exception as e:  # noqa: BLE001 - reported to rank 0, which refuses to start
        conn.send(f"{type(e).__name__}: {e}")
        return
    conn.send("ready")
    while True:
        try:
            step = pickle.loads(conn.recv_bytes())
        except EOFError:  # rank 0 is gone
            return
        if step is None:
            break
        runner.forward_logits(*step)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
