"""OpenAI legacy Completions API (`POST /v1/completions`) served by a chat-completions upstream.

Pure translation (no I/O) in `translate`; the handler owns routing, fan-out over several
prompts, and errors.
"""
