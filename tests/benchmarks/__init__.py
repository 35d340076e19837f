"""Pier's benchmark suite: the router against direct, nginx, a minimal aiohttp proxy and LiteLLM (issue 6)."""
