"""The public offline API (`runtime.Engine`) with its engine in a child process."""

import asyncio

import pytest

import runtime
from runtime.demo.checkpoint import demo_model_path
from tests.helpers import random_prompts


@pytest.fixture(scope="module")
def engine():
    eng = runtime.Engine(str(demo_model_path("qwen2", "tiny", "float32")), max_total_tokens=4096,
                         chunked_prefill_size=256)
    yield eng
    eng.shutdown()
    assert not eng._process.is_alive(), "the engine process outlived shutdown()"


@pytest.fixture(autouse=True)
def no_leaks(engine):
    yield
    engine.check_no_leaks()


GREEDY = {"max_new_tokens": 16, "temperature": 0}


def test_result_shape_and_counts(engine):
    out = engine.generate("The capital of France is", GREEDY)
    assert set(out) >= {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert meta["prompt_tokens"] == len(engine.tokenizer.encode("The capital of France is"))
    assert meta["completion_tokens"] == len(out["output_ids"]) <= 16
    assert meta["finish_reason"]["type"] in ("stop", "length")
    assert meta["e2e_latency"] > 0
    assert out["text"] == engine.tokenizer.decode(out["output_ids"], skip_special_tokens=True)


def test_batch_text_and_input_ids(engine):
    prompts = random_prompts(lens=(3, 40, 7))
    outs = engine.generate(input_ids=prompts, sampling_params=GREEDY)
    singles = [engine.generate(input_ids=p, sampling_params=GREEDY) for p in prompts]
    assert [o["output_ids"] for o in outs] == [s["output_ids"] for s in singles]
    texts = engine.generate(["a b c", "hello"], [GREEDY, {**GREEDY, "max_new_tokens": 3}])
    assert len(texts) == 2 and texts[1]["meta_info"]["completion_tokens"] <= 3


def test_a_batch_reaches_the_scheduler_together(engine):
    """generate([...]) sends the whole batch as one message: one prefill step for all of
    it, however the IPC timing falls (so bf16 batches are reproducible run to run)."""
    for _ in range(3):
        before = engine.get_server_info()["extend_steps"]
        outs = engine.generate(input_ids=random_prompts(lens=(5, 9, 13, 17, 21, 25)), sampling_params=GREEDY)
        assert len(outs) == 6 and engine.get_server_info()["extend_steps"] - before == 1


def test_a_request_id_in_flight_is_refused(engine):
    stream = engine.generate("a b c", {"max_new_tokens": 200, "ignore_eos": True}, rid="dup", stream=True)
    next(stream)
    with pytest.raises(ValueError, match="duplicate request id 'dup'"):
        engine.generate("x", GREEDY, rid="dup")
    stream.close()  # aborts it


def test_stream_pieces_concatenate_to_final_text(engine):
    chunks = list(engine.generate("Once upon a time", {**GREEDY, "max_new_tokens": 24}, stream=True))
    assert chunks[-1]["meta_info"]["finish_reason"] is not None
    assert "".join(c["delta"] for c in chunks) == chunks[-1]["text"]
    full = engine.generate("Once upon a time", {**GREEDY, "max_new_tokens": 24})
    assert chunks[-1]["output_ids"] == full["output_ids"]


def test_async_generate_and_stream(engine):
    async def main():
        outs = await asyncio.gather(*[engine.async_generate(input_ids=p, sampling_params=GREEDY)
                                      for p in random_prompts(lens=(5, 9, 30), seed=3)])
        pieces = [c["delta"] async for c in await engine.async_generate("Hi", GREEDY, stream=True)]
        return outs, pieces

    outs, pieces = asyncio.run(main())
    assert all(o["meta_info"]["finish_reason"] for o in outs)
    assert pieces


def test_n_returns_n_samples_sharing_the_prompt(engine):
    prompt = random_prompts(lens=(200,), seed=9)[0]
    outs = engine.generate(input_ids=prompt, sampling_params={"max_new_tokens": 8, "n": 4, "temperature": 1.0,
                                                              "sampling_seed": 1})
    assert len(outs) == 4
    assert len({tuple(o["output_ids"]) for o in outs}) > 1, "n seeded samples should differ"
    # the prompt is computed once: the others read it from the prefix cache
    assert sum(o["meta_info"]["cached_tokens"] for o in outs) >= 3 * 199


def test_stop_string_trimmed_and_kept(engine):
    base = engine.generate("Tell me a story", {**GREEDY, "max_new_tokens": 24})
    text = base["text"]
    assert len(text) > 6, "need some text to cut"
    stop = text[3:6]
    cut = engine.generate("Tell me a story", {**GREEDY, "max_new_tokens": 24, "stop": [stop]})
    assert cut["text"] == text[:text.index(stop)]
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    kept = engine.generate("Tell me a story", {**GREEDY, "max_new_tokens": 24, "stop": stop, "no_stop_trim": True})
    assert kept["text"] == text[:text.index(stop) + len(stop)]


def test_stop_regex_cuts_at_the_first_match_and_streams_nothing_past_it(engine):
    import re

    text = engine.generate("Tell me a story", {**GREEDY, "max_new_tokens": 24})["text"]
    assert len(text) > 8, "need some text to cut"
    pattern = re.escape(text[4]) + "." + re.escape(text[6])  # first matches at 4 (or earlier)
    first = re.search(pattern, text).start()
    sp = {**GREEDY, "max_new_tokens": 24, "stop_regex": [pattern]}
    cut = engine.generate("Tell me a story", sp)
    assert cut["text"] == text[:first]
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": pattern}
    streamed = "".join(c["delta"] for c in engine.generate("Tell me a story", sp, stream=True))
    assert streamed == text[:first]
    kept = engine.generate("Tell me a story", {**sp, "no_stop_trim": True})
    assert kept["text"] == text[:re.search(pattern, text).end()]
    with pytest.raises(ValueError, match="stop_regex is not a valid regular expression"):
        engine.generate("x", {"stop_regex": "(unclosed"})


def test_stop_token_ids_min_and_max_new_tokens(engine):
    base = engine.generate("abc", {**GREEDY, "max_new_tokens": 10, "ignore_eos": True})
    tok = base["output_ids"][4]
    out = engine.generate("abc", {**GREEDY, "max_new_tokens": 10, "stop_token_ids": [tok], "ignore_eos": True})
    first = base["output_ids"].index(tok)
    assert out["output_ids"] == base["output_ids"][:first + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": tok}
    out = engine.generate("abc", {"max_new_tokens": 5, "min_new_tokens": 5, "stop_token_ids": [tok],
                                  "temperature": 0})
    assert len(out["output_ids"]) == 5 and tok not in out["output_ids"][:4]
    assert out["meta_info"]["finish_reason"]["type"] in ("length", "stop")


def test_abort_by_rid(engine):
    async def main():
        stream = await engine.async_generate("x", {"max_new_tokens": 2000, "ignore_eos": True}, stream=True,
                                             rid="to-abort")
        first = await stream.__anext__()
        engine.abort("to-abort")
        last = first
        async for chunk in stream:
            last = chunk
        return last

    last = asyncio.run(main())
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert last["meta_info"]["completion_tokens"] < 2000


def test_logprobs(engine):
    out = engine.generate("hello world", GREEDY, return_logprob=True, top_logprobs_num=3, logprob_start_len=0)
    meta = out["meta_info"]
    assert len(meta["output_token_logprobs"]) == len(out["output_ids"])
    for (lp, tid, _), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert len(top) == 3 and top[0][1] == tid and abs(top[0][0] - lp) < 1e-6  # greedy = top-1
    prompt_len = meta["prompt_tokens"]
    assert len(meta["input_token_logprobs"]) == prompt_len and meta["input_token_logprobs"][0][0] is None


@pytest.mark.parametrize("params, field", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"bogus_key": 1}, "bogus_key"),
])
def test_bad_sampling_params(engine, params, field):
    with pytest.raises(ValueError, match=field):
        engine.generate("hi", params)


def test_bad_prompts(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate("", GREEDY)
    with pytest.raises(ValueError, match="context length is 4096"):
        engine.generate(input_ids=[5] * 5000, sampling_params=GREEDY)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.generate(input_ids=[1, 10**7], sampling_params=GREEDY)
    # the engine still serves others afterwards
    assert engine.generate("still alive", GREEDY)["meta_info"]["completion_tokens"] > 0


def test_flush_cache(engine):
    engine.generate("something to cache", GREEDY)
    assert engine.get_server_info()["evictable_tokens"] > 0
    engine.flush_cache()
    info = engine.get_server_info()
    assert info["evictable_tokens"] == 0 and info["available_tokens"] == info["max_total_tokens"]
