"""HTTP handlers: thin, they parse, call the layers below, and answer."""
