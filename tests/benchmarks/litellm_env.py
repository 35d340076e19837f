"""LiteLLM's proxy in a venv of its own (its dependency tree must not touch Pier's), created when missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEFAULT_VENV = Path(os.environ.get("PIER_BENCH_LITELLM_VENV", "/tmp/litellm-venv"))
REQUIREMENT = "litellm[proxy]"
# LiteLLM refuses to start without a master key (rightly); clients then send it as a bearer token.
MASTER_KEY = "sk-pier-bench-0123456789abcdef0123456789abcdef"
READY_MARK = ".pier-bench-ready"  # written only after a complete install


def litellm_binary(venv: Path) -> Path:
    return venv / "bin" / "litellm"


def ensure_venv(venv: Path, *, install: bool = True, log: Path | None = None) -> Path:
    """Return the `litellm` executable, installing `litellm[proxy]` into `venv` first when needed.

    Raises RuntimeError (with pip's tail) when it is missing and cannot be installed.
    """
    binary = litellm_binary(venv)
    if (venv / READY_MARK).exists() and binary.exists():
        return binary
    if binary.exists():
        (venv / READY_MARK).write_text(REQUIREMENT + "\n")
        return binary
    if not install:
        raise RuntimeError(f"LiteLLM is not installed in {venv} (run without --no-install to create it)")
    print(f"installing {REQUIREMENT} into {venv} (once; a few minutes)…", flush=True)
    # `-m venv` from inside a venv bases the new one on the same interpreter, not on this venv.
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", REQUIREMENT],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=1800, check=False)
        if log is not None:
            with log.open("a") as out:
                out.write(f"$ {' '.join(step)}\n{proc.stdout}\n{proc.stderr}\n")
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:3])} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    if not binary.exists():
        raise RuntimeError(f"{REQUIREMENT} installed but {binary} is missing")
    (venv / READY_MARK).write_text(REQUIREMENT + "\n")
    return binary


def config_text(models: dict[str, str]) -> str:
    """A LiteLLM proxy config: one OpenAI-compatible model per (name -> upstream `/v1` base URL)."""
    lines = ["model_list:"]
    for name, api_base in models.items():
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            f"      api_base: {api_base}",
            "      api_key: bench-no-key",
        ]
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        "  set_verbose: false",
        "  drop_params: true",
        "general_settings:",
        f"  master_key: {MASTER_KEY}",
        "  disable_spend_logs: true",
    ]
    return "\n".join(lines) + "\n"


def env() -> dict[str, str]:
    """Keep LiteLLM offline and quiet: the bundled model cost map, no telemetry, errors-only logs."""
    return {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }
