"""Ask Pier one question and stream the answer, with the official openai SDK.

Pier is reached by its Compose service name; the model name comes from Compose's `models:` element
(LLM_MODEL), which also made Docker Model Runner pull the model before this container started.
"""

from __future__ import annotations

import os
import sys

import openai


def main() -> int:
    base_url = os.environ.get("PIER_BASE_URL", "http://router:40114/engines/v1")
    model = os.environ.get("LLM_MODEL") or "ai/smollm2"
    prompt = os.environ.get("PROMPT", "Say hello in five words.")
    # DMR and Pier need no key; the SDK insists on one being set.
    client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "not-needed"))
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True
        )
        print(f"{model} via {base_url}: ", end="", flush=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
    except openai.APIError as exc:
        print(f"\nexample: the request to {base_url} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
