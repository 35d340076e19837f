"""Pier's three services: router, health and warm-up (each runnable as `python -m services.<name>`)."""
