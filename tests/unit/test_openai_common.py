"""How an engine abort becomes the HTTP error a client sees."""

import pytest

from runtime.server.openai_common import abort_error


@pytest.mark.parametrize("message, status", [
    ("the engine was shut down", 503),
    ("the engine process stopped", 503),
    ("internal error: RuntimeError: boom", 500),
    ("invalid grammar: invalid JSON schema at (root): 'strin' is not valid", 400),
    ("grammar compilation timed out after 5.0s: outlines did not finish indexing the json_schema grammar "
     "within 5.0s; the compile was stopped", 400),
])
def test_abort_messages_map_to_http_status(message, status):
    error = abort_error({"finish_reason": {"type": "abort", "message": message}})
    assert error.status == status and error.message == message


def test_a_request_that_was_not_aborted_is_no_error():
    assert abort_error({"finish_reason": {"type": "stop"}}) is None
