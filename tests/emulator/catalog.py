"""Pulled models and their metadata, named the way DMR stores tags.

The emulator normalises names itself rather than importing Pier's `shared.names`: it stands in for DMR, so
it must not inherit a bug in the code under test (and it stays runnable with aiohttp alone in a container).
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any


def normalise(name: str) -> str:
    """`SmolLM2` -> `ai/smollm2:latest`; `hf.co/x/y` -> `huggingface.co/x/y:latest`; digests keep no tag."""
    ref = name.strip().lower()
    if not ref:
        return ref
    if ref.startswith("hf.co/"):
        ref = "huggingface.co/" + ref[len("hf.co/") :]
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return f"{repo if '/' in repo else 'ai/' + repo}@{digest}"
    if ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    return ref if "/" in ref else f"ai/{ref}"


def short(name: str) -> str:
    """The tag without `:latest` (how DMR shows runners configured with the bare name)."""
    return name.removesuffix(":latest")


@dataclass(frozen=True)
class ModelInfo:
    format: str
    quantization: str
    parameters: str
    architecture: str
    size: str
    size_bytes: int
    context_size: int
    embedding: bool = False


_KNOWN: dict[str, ModelInfo] = {
    "ai/smollm2": ModelInfo("gguf", "IQ2_XXS/Q4_K_M", "361.82 M", "llama", "256.35 MiB", 268_800_000, 8192),
    "ai/gemma3": ModelInfo("gguf", "IQ2_XXS/Q4_K_M", "3.88 B", "gemma3", "2.31 GiB", 2_480_000_000, 131072),
    "ai/qwen3": ModelInfo("gguf", "IQ2_XXS/Q4_K_M", "8.19 B", "qwen3", "4.68 GiB", 5_030_000_000, 40960),
    "ai/llama3.2": ModelInfo("gguf", "IQ2_XXS/Q4_K_M", "3.21 B", "llama", "1.87 GiB", 2_010_000_000, 131072),
    "ai/mxbai-embed-large": ModelInfo("gguf", "F16", "334.09 M", "bert", "638.85 MiB", 669_880_000, 512, True),
    "ai/qwen3-vllm": ModelInfo("safetensors", "BF16", "8.19 B", "qwen3", "15.26 GiB", 16_380_000_000, 40960),
}
_DEFAULT = ModelInfo("gguf", "Q4_K_M", "1.00 B", "llama", "600.00 MiB", 629_145_600, 4096)


def info_for(tag: str) -> ModelInfo:
    repo = tag.split("@", 1)[0].rsplit(":", 1)[0]
    if repo in _KNOWN:
        return _KNOWN[repo]
    if "embed" in repo:
        return ModelInfo("gguf", "F16", "137.00 M", "nomic-bert", "260.86 MiB", 273_530_000, 2048, True)
    return _DEFAULT


def model_id(tag: str) -> str:
    return "sha256:" + hashlib.sha256(tag.encode()).hexdigest()


@dataclass
class PulledModel:
    tag: str
    created: int
    info: ModelInfo

    @property
    def id(self) -> str:
        return model_id(self.tag)

    def management_json(self) -> dict[str, Any]:
        """One entry of `GET /models`."""
        i = self.info
        return {
            "id": self.id,
            "tags": [self.tag],
            "created": self.created,
            "config": {
                "format": i.format,
                "quantization": i.quantization,
                "parameters": i.parameters,
                "architecture": i.architecture,
                "size": i.size,
                "context_size": i.context_size,
            },
        }

    def openai_json(self) -> dict[str, Any]:
        """One entry of `GET /engines/v1/models` (first tag as id, the `dmr` object of v1.1.29+)."""
        i = self.info
        return {
            "id": self.tag,
            "object": "model",
            "created": self.created,
            "owned_by": "docker",
            "dmr": {
                "context_window": i.context_size,
                "architecture": i.architecture,
                "parameters": i.parameters,
                "quantization": i.quantization,
                "size": i.size,
            },
        }


@dataclass
class Catalog:
    """The pulled models, keyed by normalised tag."""

    models: dict[str, PulledModel] = field(default_factory=dict)

    def set_pulled(self, names: list[str]) -> None:
        kept = {normalise(n) for n in names if n.strip()}
        self.models = {t: m for t, m in self.models.items() if t in kept}
        for tag in sorted(kept):
            self.add(tag)

    def add(self, name: str) -> PulledModel:
        tag = normalise(name)
        if tag not in self.models:
            self.models[tag] = PulledModel(tag, int(time.time()), info_for(tag))
        return self.models[tag]

    def get(self, name: str) -> PulledModel | None:
        tag = normalise(name)
        if tag in self.models:
            return self.models[tag]
        # A digest reference resolves to the model with that id (as DMR resolves `name@sha256:…`/ids).
        for model in self.models.values():
            if name == model.id or name.removeprefix("sha256:") == model.id.removeprefix("sha256:"):
                return model
        return None

    def remove(self, name: str) -> PulledModel | None:
        model = self.get(name)
        if model is not None:
            del self.models[model.tag]
        return model


def pullable(name: str, patterns: list[str]) -> bool:
    tag = normalise(name)
    repo = tag.rsplit(":", 1)[0]
    return any(fnmatch.fnmatchcase(tag, normalise(p)) or fnmatch.fnmatchcase(repo, p.lower()) for p in patterns)
