"""Tool calls in model text, shared by the server and the frontend language: the
per-family parsers (`parsers`), the prompt format for templates that show no tools
(`prompt_format`) and the incremental JSON scanner the parsers stream with (`json_scan`)."""
