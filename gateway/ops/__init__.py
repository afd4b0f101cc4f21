"""Endpoints for operators, not for model calls: health and readiness, metrics, config reload,
the usage query API and the dashboard."""
