"""Model lists from the routing table: one entry per normalised model, in DMR's, OpenAI's and Olla's shapes."""

from __future__ import annotations

import json
from typing import Any

from openai.types import Model

from services.router.listing import merged_inventory, merged_ps, models_status, olla_models, openai_models
from services.router.table import RoutingTable, build_table
from shared.state import EndpointStatus, LoadedModel, PulledModel, WarmPhase, WarmPolicy, WarmState
from tests.router.core_builders import NOW, config, endpoint, state, states

SMOL = "ai/smollm2:latest"
PHI = "ai/phi3:latest"
LLAMA = "ai/llama3.2:1b"
EMBED = "ai/mxbai-embed:latest"

SMOL_DETAILS = PulledModel(
    name=SMOL,
    tags=(SMOL, "ai/smollm2:360m"),
    id="sha256:aaa",
    format="gguf",
    size="256.35 MiB",
    context_size=8192,
    created=1742816981,
    architecture="llama",
    parameters="361.82 M",
    quantization="Q4_K_M",
)


def fleet() -> RoutingTable:
    """Three DMRs and an Ollama: `top` and `mid` share smollm2; `off` is offline; `gone` expired."""
    cfg = config(
        endpoint("top", 100, model_filter={"exclude": ["*embed*"]}),
        endpoint("mid", 50),
        endpoint("off", 200),
        endpoint("gone", 300),
        endpoint("olla", 10, type_="ollama"),
        aliases={"fast": ["smollm2"]},
    )
    top = state("top", models=(SMOL, EMBED), pulled=(SMOL_DETAILS, EMBED), loaded=(SMOL,))
    mid = state(
        "mid",
        models=(SMOL, PHI),
        pulled=(PulledModel(name=SMOL, tags=(SMOL,), id="sha256:aaa", format="gguf", context_size=4096), PHI),
        loading=(PHI,),
    )
    off = state("off", status=EndpointStatus.OFFLINE, models=(LLAMA,), pulled=(LLAMA,))
    gone = state("gone", models=(LLAMA, SMOL), checked_at=NOW - 120)
    olla = state("olla", type_="ollama", models=(PHI,), models_known=True)
    return build_table(cfg, states(top, mid, off, gone, olla), now=NOW)


def by_id(data: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in data}


def test_openai_models_has_one_entry_per_model_across_routable_endpoints() -> None:
    body = openai_models(fleet())
    assert body["object"] == "list"
    ids = [entry["id"] for entry in body["data"]]
    assert ids == [PHI, SMOL]  # sorted; LLAMA only on offline/expired endpoints; EMBED filtered on `top`
    entries = by_id(body["data"])
    assert entries[SMOL]["pier"] == {"endpoints": ["top", "mid"], "loaded_on": ["top"]}
    assert entries[PHI]["pier"] == {"endpoints": ["mid", "olla"], "loaded_on": []}  # loading is not loaded
    assert entries[SMOL]["owned_by"] == "docker"


def test_openai_models_keeps_the_dmr_object_of_the_first_endpoint_that_has_it() -> None:
    smol = by_id(openai_models(fleet())["data"])[SMOL]
    assert smol["dmr"] == {
        "context_window": 8192,  # from `top` (priority 100), not `mid`'s 4096
        "architecture": "llama",
        "parameters": "361.82 M",
        "quantization": "Q4_K_M",
        "size": "256.35 MiB",
    }
    assert smol["created"] == 1742816981
    phi = by_id(openai_models(fleet())["data"])[PHI]
    assert "dmr" not in phi  # no details anywhere: no empty object


def test_openai_models_entries_parse_with_the_official_sdk() -> None:
    body = json.loads(json.dumps(openai_models(fleet())))
    models = [Model.model_validate(entry) for entry in body["data"]]
    assert [m.id for m in models] == [PHI, SMOL]
    assert all(m.object == "model" for m in models)


def test_openai_models_of_an_empty_table_is_an_empty_list() -> None:
    assert openai_models(build_table(config(endpoint("a")), {}, now=NOW)) == {"object": "list", "data": []}


def test_olla_models_shows_availability_aliases_and_details() -> None:
    body = olla_models(fleet())
    assert [e["id"] for e in body["data"]] == [PHI, SMOL]
    smol = by_id(body["data"])[SMOL]["olla"]
    assert smol["availability"] == [
        {"endpoint": "top", "url": "http://top.test:12434", "state": "loaded"},
        {"endpoint": "mid", "url": "http://mid.test:12434", "state": "available"},
    ]
    assert smol["aliases"] == ["ai/fast:latest", "ai/smollm2:360m"]
    assert smol["format"] == "gguf"
    assert smol["parameter_size"] == "361.82 M"
    assert smol["quantization"] == "Q4_K_M"
    assert smol["max_context_length"] == 8192
    phi = by_id(body["data"])[PHI]["olla"]
    assert [a["state"] for a in phi["availability"]] == ["loading", "available"]


def test_merged_inventory_merges_by_tag_across_routable_endpoints() -> None:
    inventory = merged_inventory(fleet())
    assert [e["tags"][0] for e in inventory] == [PHI, SMOL]  # LLAMA is only pulled on the offline endpoint
    smol = inventory[1]
    assert smol["id"] == "sha256:aaa"
    assert smol["tags"] == [SMOL, "ai/smollm2:360m"]
    assert smol["endpoints"] == ["top", "mid"]
    assert smol["created"] == 1742816981
    assert smol["config"] == {
        "format": "gguf",
        "quantization": "Q4_K_M",
        "parameters": "361.82 M",
        "architecture": "llama",
        "size": "256.35 MiB",
        "context_size": 8192,
    }
    assert inventory[0]["endpoints"] == ["mid"]


def test_merged_ps_tags_each_runner_with_its_endpoint_in_dmr_shape() -> None:
    cfg = config(endpoint("a", 100), endpoint("b", 50), endpoint("c", 10))
    a = state("a", models=(SMOL,))
    a = a.model_copy(
        update={
            "loaded": (
                LoadedModel(name=SMOL, backend="llama.cpp", mode="completion", in_use=True, keep_alive="10m0s"),
            ),
            "loaded_known": True,
        }
    )
    b = state("b", loading=(PHI,))
    c = state("c", status=EndpointStatus.OFFLINE, loaded=(LLAMA,))
    rows = merged_ps(build_table(cfg, states(a, b, c), now=NOW))
    assert rows == [
        {
            "backend_name": "llama.cpp",
            "model_name": SMOL,
            "mode": "completion",
            "in_use": True,
            "keep_alive": "10m0s",
            "endpoint": "a",
        },
        {"backend_name": "llama.cpp", "model_name": PHI, "loading": True, "endpoint": "b"},
    ]


def test_models_status_shows_every_endpoint_with_state() -> None:
    status = models_status(fleet())
    assert list(status) == sorted(status)
    assert status[SMOL] == {
        "listed_on": ["gone", "top", "mid"],
        "pulled_on": ["top", "mid"],
        "loaded_on": ["top"],
        "loading_on": [],
        "routable_on": ["top", "mid"],
        "stale_on": ["gone"],
        "warm": {},
    }
    assert status[LLAMA]["routable_on"] == []
    assert status[LLAMA]["pulled_on"] == ["off"]
    assert status[PHI]["loading_on"] == ["mid"]
    assert EMBED not in status  # `top` filters it out; nothing else has it


def test_models_status_shows_the_warm_up_state() -> None:
    base = fleet()
    warm = {
        ("top", SMOL): WarmState(
            endpoint="top", model=SMOL, phase=WarmPhase.WARM, policy=WarmPolicy.PIN, load_time_s=4.2
        ),
        ("mid", SMOL): WarmState(
            endpoint="mid", model=SMOL, phase=WarmPhase.FAILED, last_error="HTTP 500: boom", next_retry_at=NOW + 20
        ),
        ("mid", LLAMA): WarmState(
            endpoint="mid", model=LLAMA, phase=WarmPhase.COLD, fits=False, detail="does not fit: runner limit 1"
        ),
    }
    status = models_status(
        build_table(base.config, {t.name: t.state for t in base.targets.values() if t.state}, now=NOW, warm=warm)
    )
    assert status[SMOL]["warm"]["top"]["phase"] == "warm"
    assert (status[SMOL]["warm"]["top"]["policy"], status[SMOL]["warm"]["top"]["load_time_s"]) == ("pin", 4.2)
    failed = status[SMOL]["warm"]["mid"]
    assert (failed["phase"], failed["last_error"], failed["next_retry_at"]) == ("failed", "HTTP 500: boom", NOW + 20)
    unfit = status[LLAMA]["warm"]["mid"]
    assert (unfit["phase"], unfit["fits"], unfit["detail"]) == ("cold", False, "does not fit: runner limit 1")
