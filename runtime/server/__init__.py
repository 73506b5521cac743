"""The HTTP server: OpenAI-compatible and SGLang-native endpoints over `runtime.Engine`.

`launch.serve(args)` runs it (`radixflow serve`); `app.create_app(engine, settings)`
builds the FastAPI app around an engine that is already running.
"""
