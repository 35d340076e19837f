"""Pier's warm-up worker: keeps the models users need loaded, so no request waits for a cold load."""
