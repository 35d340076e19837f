"""Parsing DMR's listings into state models (shapes from the DMR API reference)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.inventory import (
    InventoryError,
    loaded_signature,
    parse_engines,
    parse_loaded,
    parse_model_list,
    parse_pulled,
    parse_version,
)
from shared.state import LoadedModel

OPENAI_LIST = {
    "object": "list",
    "data": [
        {
            "id": "ai/smollm2:latest",
            "object": "model",
            "created": 1742816981,
            "owned_by": "docker",
            "dmr": {"context_window": 8192, "architecture": "llama"},
        },
        {"id": "SmolLM2", "object": "model"},  # normalises to the same name: listed once
        {"id": "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "object": "model"},
    ],
}


def test_model_list_normalises_and_dedups() -> None:
    assert parse_model_list(OPENAI_LIST) == (
        "ai/smollm2:latest",
        "huggingface.co/bartowski/llama-3.2-1b-instruct-gguf:latest",
    )


@pytest.mark.parametrize("body", [{"object": "list", "data": []}, {"data": None}])
def test_empty_model_list_is_valid(body: object) -> None:
    assert parse_model_list(body) == ()


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "Docker Model Runner is running",
        {"object": "list"},
        {"data": "x"},
        {"data": [{"object": "model"}]},
        {"data": [3]},
    ],
)
def test_model_list_garbage(body: object) -> None:
    with pytest.raises(InventoryError):
        parse_model_list(body)


def test_pulled() -> None:
    body: list[dict[str, Any]] = [
        {
            "id": "sha256:abc",
            "tags": ["ai/smollm2:latest", "smollm2:360m"],
            "created": 1742816981,
            "config": {
                "format": "gguf",
                "size": "256.35 MiB",
                "context_size": 8192,
                "architecture": "llama",
                "parameters": "361.82 M",
                "quantization": "Q4_K_M",
            },
        },
        {"id": "sha256:def", "tags": [], "config": None},  # untagged: named by its id
        {"tags": None},  # neither: skipped
    ]
    pulled = parse_pulled(body)
    assert [m.name for m in pulled] == ["ai/smollm2:latest", "sha256:def"]
    assert pulled[0].tags == ("ai/smollm2:latest", "ai/smollm2:360m")
    assert (pulled[0].format, pulled[0].size, pulled[0].context_size) == ("gguf", "256.35 MiB", 8192)
    details = (pulled[0].created, pulled[0].architecture, pulled[0].parameters, pulled[0].quantization)
    assert details == (1742816981, "llama", "361.82 M", "Q4_K_M")
    assert pulled[1].format is None
    assert (pulled[1].created, pulled[1].architecture, pulled[1].parameters, pulled[1].quantization) == (None,) * 4


@pytest.mark.parametrize("body", [{"models": []}, "x", [1]])
def test_pulled_garbage(body: object) -> None:
    with pytest.raises(InventoryError):
        parse_pulled(body)


def test_loaded() -> None:
    body = [
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/smollm2",
            "mode": "completion",
            "last_used": "2026-01-01T00:00:00Z",
        },
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/gemma3",
            "mode": "completion",
            "in_use": True,
            "loading": True,
            "keep_alive": "10m0s",
        },
    ]
    loaded = parse_loaded(body)
    assert [(m.name, m.loading, m.in_use, m.keep_alive) for m in loaded] == [
        ("ai/gemma3:latest", True, True, "10m0s"),
        ("ai/smollm2:latest", False, False, None),
    ]
    assert parse_loaded([]) == ()
    assert parse_loaded(None) == ()


@pytest.mark.parametrize("body", [{"x": 1}, [{"backend_name": "llama.cpp"}], ["a"]])
def test_loaded_garbage(body: object) -> None:
    with pytest.raises(InventoryError):
        parse_loaded(body)


def test_loaded_signature_ignores_per_request_fields() -> None:
    a = (LoadedModel(name="ai/x:latest", backend="llama.cpp", in_use=False, last_used="1"),)
    b = (LoadedModel(name="ai/x:latest", backend="llama.cpp", in_use=True, last_used="2"),)
    c = (LoadedModel(name="ai/x:latest", backend="llama.cpp", loading=True),)
    assert loaded_signature(a) == loaded_signature(b)
    assert loaded_signature(a) != loaded_signature(c)


def test_engines_and_version() -> None:
    assert parse_engines({"vllm": "Not Installed", "llama.cpp": "Running: llama.cpp abc"}) == {
        "llama.cpp": "Running: llama.cpp abc",
        "vllm": "Not Installed",
    }
    assert parse_version({"version": "v1.2.6"}) == "v1.2.6"
    assert parse_version({}) is None
    with pytest.raises(InventoryError):
        parse_engines(["llama.cpp"])
    with pytest.raises(InventoryError):
        parse_version("v1.2.6")
