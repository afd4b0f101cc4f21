"""Shared state stores: the one Redis client of a process."""
