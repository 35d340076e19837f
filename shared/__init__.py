"""Pier's common package: configuration, the Redis state contract and helpers every service shares."""
