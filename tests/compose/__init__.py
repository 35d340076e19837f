"""The compose tier: the real compose.yaml and stack.yaml on a real Docker engine (marker `compose`)."""
