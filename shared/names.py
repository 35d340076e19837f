"""Model names normalised the way DMR stores tags, so `smollm2`, `ai/smollm2` and `ai/smollm2:latest` match."""

from __future__ import annotations

from functools import lru_cache

DEFAULT_NAMESPACE = "ai"
DEFAULT_TAG = "latest"


@lru_cache(maxsize=4096)
def normalise_model(name: str) -> str:
    """Lower-case, default the `ai/` namespace and the `:latest` tag, and map `hf.co/` to `huggingface.co/`.

    A digest reference (`name@sha256:…`) keeps its digest and gets no tag.
    """
    ref = name.strip().lower()
    if not ref:
        return ref
    if ref.startswith("hf.co/"):
        ref = "huggingface.co/" + ref[len("hf.co/") :]
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return f"{_with_namespace(repo)}@{digest}"
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        ref = f"{ref}:{DEFAULT_TAG}"
    return _with_namespace(ref)


def _with_namespace(ref: str) -> str:
    return ref if "/" in ref else f"{DEFAULT_NAMESPACE}/{ref}"
