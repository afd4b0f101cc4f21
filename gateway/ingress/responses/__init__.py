"""OpenAI Responses API (`POST /v1/responses`) served by a chat-completions upstream.

`to_chat` turns a Responses request into a chat body, `from_chat` a chat answer into a Response
object, and `stream_from_chat` a chat chunk stream into the Responses typed SSE events. All pure:
no I/O, so the handler owns routing, storage and errors.
"""
