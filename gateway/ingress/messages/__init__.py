"""Anthropic Messages API (`POST /v1/messages`) served by a chat-completions upstream.

`to_chat` turns a Messages request into a chat body, `from_chat` a chat answer into a
`Message`, `stream_from_chat` a chat chunk stream into Anthropic's SSE events, and `errors`
speaks Anthropic's error dialect. All pure: no I/O, so the handler owns routing, limits,
usage records and the HTTP exchange.
"""
