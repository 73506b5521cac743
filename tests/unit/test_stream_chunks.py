"""A stream's chunks from a request's state (runtime/engine/api.py, _next_chunk): the reader
thread folds outputs into the state while a stream reads it, so the update that woke the
stream can be older than the state it then reads."""

from runtime.core import FinishKind, FinishReason, RequestOptions, SamplingParams, TokenOut
from runtime.engine.api import _next_chunk
from runtime.engine.output_processor import RequestState


class _OneCharPerToken:
    def add(self, ids):
        return "x" * len(ids)

    def flush(self):
        return ""


def test_a_final_output_that_landed_before_the_read_ends_the_stream_once():
    state = RequestState("r", SamplingParams(), RequestOptions(), _OneCharPerToken(), prompt_tokens=3)
    state.apply(TokenOut("r", [1]), tokenizer=None)
    # the stream wakes for that update (finished False), but the final output lands first
    state.apply(TokenOut("r", [2], finished=True, finish_reason=FinishReason(FinishKind.LENGTH)), tokenizer=None)
    chunk, sent, finished = _next_chunk(state, 0, False)
    assert finished and sent == 2  # the last chunk: the stream stops here, not at the queued final update
    assert chunk["delta"] == "xx" and chunk["meta_info"]["finish_reason"]["type"] == "length"


def test_no_news_is_no_chunk():
    state = RequestState("r", SamplingParams(), RequestOptions(), _OneCharPerToken(), prompt_tokens=3)
    state.apply(TokenOut("r", [1]), tokenizer=None)
    assert _next_chunk(state, 0, False)[1:] == (1, False)
    assert _next_chunk(state, 1, False) == (None, 1, False)
