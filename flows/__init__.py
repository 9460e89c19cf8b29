"""Prefect flows: thin shells that wrap `tasks/` functions and sequence them."""
