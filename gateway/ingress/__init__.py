"""Ingress APIs other than chat completions, translated to and from a chat-completions upstream."""
