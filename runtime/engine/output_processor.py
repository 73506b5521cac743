"""Front-end side of a request: detokenize, match stop strings and stop regexes, build
result dicts.

Lives in the caller's process (Engine, HTTP server). Stops are matched here, on text;
when one matches, the caller aborts the request in the engine, which may have produced
a token or two more: those are dropped. Text that could still become a stop (a stop
string's prefix, a regex's partial match at the end) is held back from `visible`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from runtime.core import FinishKind, FinishReason, RequestOptions, SamplingParams, TokenOut
from runtime.engine.detokenizer import IncrementalDetokenizer


@dataclass
class RequestState:
    rid: str
    params: SamplingParams
    options: RequestOptions
    detok: IncrementalDetokenizer
    prompt_tokens: int
    created: float = field(default_factory=time.time)
    text: str = ""  # all text decoded so far (may run past a stop string, see `visible`)
    visible: int = 0  # length of text that is final and may be shown
    output_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: FinishReason | None = None
    cached_tokens: int = 0
    output_token_logprobs: list = field(default_factory=list)
    output_top_logprobs: list = field(default_factory=list)
    input_token_logprobs: list | None = None
    input_top_logprobs: list | None = None
    stop_patterns: list = field(init=False)  # compiled stop_regex
    # held by the reader thread while it folds an output in (`apply`) and by a reader of the
    # state while it takes a snapshot: a snapshot never sees half an update
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stop_patterns = self.params.stop_regexes

    @property
    def max_stop_len(self) -> int:
        return max((len(s) for s in self.params.stop_strs), default=0)

    def apply(self, out: TokenOut, tokenizer) -> bool:
        """Fold one engine output in. Returns True if a stop string ended the request
        here (the caller must then abort it in the engine)."""
        if self.finished:
            return False
        self.cached_tokens = out.cached_tokens
        if out.input_token_logprobs is not None:
            self.input_token_logprobs = self._with_text(out.input_token_logprobs, tokenizer)
            self.input_top_logprobs = [None if t is None else self._with_text(t, tokenizer)
                                       for t in out.input_top_logprobs]
        stopped = False
        for k, token in enumerate(out.new_token_ids):
            self.output_ids.append(token)
            if out.output_token_logprobs is not None:
                self.output_token_logprobs += self._with_text([out.output_token_logprobs[k]], tokenizer)
                self.output_top_logprobs.append(self._with_text(out.output_top_logprobs[k], tokenizer))
            self.text += self.detok.add([token])
            if (self.params.stop_strs or self.stop_patterns) and self._match_stop():
                stopped = True
                break
        if not stopped:
            if out.finished:
                self.text += self.detok.flush()
                self.finished, self.finish_reason = True, out.finish_reason
                self.visible = len(self.text)
            else:
                # hold back a tail that could still become a stop string or match a stop regex
                final = len(self.text) - max(self.max_stop_len - 1, 0)
                for pattern in self.stop_patterns:
                    partial = pattern.search(self.text, self.visible, partial=True)
                    if partial is not None:
                        final = min(final, partial.start())
                self.visible = max(self.visible, final)
        return stopped

    def _match_stop(self) -> bool:
        window_start = max(0, self.visible - self.max_stop_len)
        best = None
        for stop in self.params.stop_strs:
            idx = self.text.find(stop, window_start)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, idx + len(stop), stop)
        for pattern in self.stop_patterns:
            m = pattern.search(self.text, self.visible)
            if m is not None and (best is None or m.start() < best[0]):
                best = (m.start(), m.end(), pattern.pattern)
        if best is None:
            return False
        idx, end, stop = best
        self.text = self.text[:end] if self.params.no_stop_trim else self.text[:idx]
        self.visible = len(self.text)
        self.finished, self.finish_reason = True, FinishReason(FinishKind.STOP, matched=stop)
        return True

    def _with_text(self, items, tokenizer) -> list:
        """(logprob, id) pairs -> SGLang's (logprob, id, text-or-None) triples."""
        return [(lp, tid, tokenizer.decode([tid]) if self.options.return_text_in_logprobs else None)
                for lp, tid in items]

    def result(self) -> dict:
        meta = {
            "id": self.rid,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": len(self.output_ids),
            "cached_tokens": self.cached_tokens,
            "finish_reason": self.finish_reason.to_dict() if self.finish_reason else None,
            "e2e_latency": time.time() - self.created,
        }
        if self.options.return_logprob:
            meta["output_token_logprobs"] = self.output_token_logprobs
            meta["output_top_logprobs"] = self.output_top_logprobs
            if self.input_token_logprobs is not None:
                meta["input_token_logprobs"] = self.input_token_logprobs
                meta["input_top_logprobs"] = self.input_top_logprobs
        return {"text": self.text[:self.visible], "output_ids": list(self.output_ids), "meta_info": meta}
