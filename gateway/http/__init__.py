"""The HTTP side every API shares: the middleware (request id, errors, access log, settling),
body reading and validation helpers, whole answers and SSE streams written to the client."""
