"""Agent-framework plugins, each importing its framework (install the matching extra):
`runtime.integrations.langchain` (ChatRadixflow, program_runnable: `radixflow[langchain]`),
`runtime.integrations.llama_index` (Radixflow, program_tool: `radixflow[llama-index]`). Both run
the runtime in this process (`local_server.LocalServer`) or talk to a running server."""
