"""A stand-in for `runtime.Engine` whose outputs are scripted, to test the HTTP layer's
parsing (tool calls, streaming deltas) on outputs a random-weight model never writes.
It speaks the Engine's async API: result dicts of the same shape, streams of
cumulative-text chunks, token by token (real tokenizer)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from runtime.prompt_check import max_prompt_bytes


class ScriptedEngine:
    def __init__(self, tokenizer, model_path: str) -> None:
        self.tokenizer, self.model_path = tokenizer, model_path
        self.served_model_name = "radixflow-demo"
        self.config = SimpleNamespace(model_path=None, max_running_requests=8, max_queued_requests=8)
        self.info = {"architecture": "Scripted", "vocab_size": 151936, "context_length": 4096,
                     "max_total_tokens": 8192}
        self.max_prompt_bytes = max_prompt_bytes(tokenizer, self.info["context_length"])
        self.outputs: list[str] = []  # next outputs, consumed in order (the last one repeats)
        self.requests: list[dict] = []  # what the server sent

    def _next(self) -> str:
        return self.outputs.pop(0) if len(self.outputs) > 1 else self.outputs[0]

    def _result(self, rid: str, ids: list[int], text: str, prompt_len: int, done: bool) -> dict:
        reason = {"type": "stop", "matched": 151645} if done else None
        return {"text": text, "output_ids": list(ids), "meta_info": {
            "id": rid, "prompt_tokens": prompt_len, "completion_tokens": len(ids), "cached_tokens": 0,
            "finish_reason": reason, "e2e_latency": 0.0}}

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None, stream=False, rid=None,
                             **kwargs):
        self.requests.append({"input_ids": input_ids, "sampling_params": dict(sampling_params or {}), **kwargs})
        text = self._next()
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        prompt_len = len(input_ids or [])
        if not stream:
            return self._result(rid, ids, text, prompt_len, True)

        async def chunks():
            for k in range(1, len(ids) + 1):
                await asyncio.sleep(0)
                partial = self.tokenizer.decode(ids[:k])
                yield self._result(rid, ids[:k], partial, prompt_len, k == len(ids))

        return chunks()

    def abort(self, rid: str) -> None:
        pass

    def get_server_info(self) -> dict:
        return {**self.info, "running": 0, "waiting": 0, "available_tokens": 8192}

    def flush_cache(self) -> None:
        pass

    def is_alive(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass
