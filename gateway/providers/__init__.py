"""What the gateway calls upstream: one module per upstream API (its Provider and its config
model), the shared HTTP plumbing, and the registry that builds a provider from its `type`."""
