"""One module (or folder) per API a client speaks: it parses and validates the client's
request, hands the pipeline a canonical (OpenAI chat) request, and writes the answer and the
stream events back in the client's own API. Chat completions and embeddings are OpenAI's own
and pass through; Messages, Responses and Completions translate to and from chat."""
