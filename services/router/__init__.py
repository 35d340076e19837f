"""The router: an aiohttp proxy that routes OpenAI/DMR-shaped requests to the best endpoint."""
