"""How an engine abort becomes the HTTP error a client sees: by its cause, never by
parsing the message."""

import pytest

from runtime.core import AbortCause, FinishReason
from runtime.server.openai_common import abort_error


@pytest.mark.parametrize("cause, message, status", [
    (AbortCause.ENGINE_GONE, "the engine was shut down", 503),
    (AbortCause.INTERNAL, "internal error: RuntimeError: boom", 500),
    (AbortCause.INVALID_REQUEST, "invalid grammar: invalid JSON schema at (root): 'strin' is not valid", 400),
    (AbortCause.INVALID_REQUEST, "the engine could not compile it", 400),  # the words do not matter
    (AbortCause.CANCELLED, "aborted by request", 499),
])
def test_abort_causes_map_to_http_status(cause, message, status):
    meta = {"finish_reason": FinishReason.abort(cause, message).to_dict()}
    error = abort_error(meta)
    assert error.status == status and error.message == message
    assert meta["finish_reason"]["status_code"] == status  # SGLang's field, for native clients


def test_a_request_that_was_not_aborted_is_no_error():
    assert abort_error({"finish_reason": {"type": "stop"}}) is None
