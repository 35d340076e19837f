"""A faithful stand-in for Docker Model Runner (DMR), built to /work/shared/reference/dmr-api.md.

Run it: `python -m tests.emulator --port N [options]` (binds 127.0.0.1; `--host 0.0.0.0` in a container).
In process: `EmulatorServer(EmulatorConfig(port=0, ...))` (`await start()`, `.url`, `.admin_url`,
`await close()`), or `build_app(config)` for an aiohttp app of your own (no `refuse` fault then).

CLI flags (each also settable at run time through `POST /_emulator/config`, key = flag with `_`):
  --models ai/smollm2,ai/gemma3   pulled models (default ai/smollm2)
  --name NAME                     shown in replies (`Hello from NAME (model).`) and header X-Emulator-Name
  --list-mode pulled|loaded       what /engines/v1/models lists (current DMR: pulled; old DMR: loaded)
  --no-ps                         old DMR: /engines/ps and /version answer 404
  --version v1.2.6                /version
  --load-time-ms 200              lazy load on the first inference of a model (per model: model_load_time_ms)
  --keep-alive-s 300              idle eviction (per model: /engines/_configure keep_alive; -1 never, 0 at once)
  --max-runners N                 default min(CPUs, 8); the idle least recently used runner is evicted
  --chunks 5                      content chunks per streamed reply (the reply has this many pieces)
  --chunk-interval-ms 10          spacing between SSE events
  --first-byte-delay-ms 0         wait after the load, before the response headers
  --pull-time-ms 50               duration of /models/create progress (config only: pull_error makes it fail)
  --pullable 'ai/*'               glob patterns /models/create accepts (others: 404 Model not found)
  --engines llama.cpp             engines installed (`Running`); others `Not Installed`, requests -> 412
  --allowed-origins ''            extra CORS origins ('*' = any); local origins are always allowed
  --loading-503                   old DMR: while a model loads, answer llama.cpp's 503 `Loading model` (the first
                                  request starts the load in the background)
  --log-limit 20000               request log keeps the newest N records
  --fail-models ai/qwen3          these models' loads fail: 500 `unable to load runner: …`
  --parallel 1                    generation slots per runner (llama.cpp's --parallel; DMR's default 1): requests
                                  inside one runner (model + mode; embeddings too) generate one at a time, first
                                  come first served, each answering (headers included) only once it has a slot;
                                  a model's `_configure` runtime-flags (`["--parallel", "4"]`, `"--parallel=4"`)
                                  override it; a change applies to runners started afterwards
  --no-anthropic                  no Anthropic Messages routes (/anthropic/v1/messages, /v1/messages: 404), as on
                                  an `openai-compatible` server (vLLM, LM Studio) or a DMR without them
  --tokenize                      llama-server's POST /tokenize {"content": "..."} -> {"tokens": [...]}
  --reasoning                     chat replies start with `reasoning_content` (streamed first)
  Chat completions also honour `tools` (a call to the first tool, or the one `tool_choice` names, with
  arguments from its schema; after a `tool` message the reply quotes the result) and `stop` (the reply is cut
  before the first stop string, and the choice names it in vLLM's `stop_reason`).
  --host 127.0.0.1, --port N, --admin-port N (admin routes only; keeps answering during `refuse`)

Admin routes (JSON, on the main port and the admin port):
  GET  /_emulator/state     config, pulled, runners, loaded, fault, counters, listening
  POST /_emulator/config    any subset of the switches, plus "fault": {...}; 400 naming a bad key
  POST /_emulator/fault     {"mode": "none|refuse|reset|status|loading|hang|drop|slow_first_byte",
                            "status": 500, "message": null, "retry_after": 1, "count": null (= until cleared),
                            "paths": null (prefixes; admin routes never), "delay_ms": 0, "drop_after": 1,
                            "duration_ms": null (auto-clear after)}
  GET  /_emulator/requests  every non-admin request: {id, method, path, query, headers, body, at, status,
                            finished, disconnected, disconnected_during_load, fault}
  POST /_emulator/reset     clears the log, counters, runners and the fault (re-opens a refused listener)
State's runners also show `parallel`, `generating` (slots taken) and `queued` (waiting for a slot); /metrics shows
them as `llamacpp:requests_processing` / `llamacpp:requests_deferred`.
Counters: requests, inference_requests, loads_started, loads_completed, loads_aborted, loads_failed, evictions, unloads,
pulls, disconnects, faults_applied, streams_completed, streams_aborted.

DMR's own errors are text/plain with a trailing newline (Go's http.Error); compare `text.strip()`.
"""

from tests.emulator.app import build_app
from tests.emulator.config import EmulatorConfig
from tests.emulator.server import EmulatorServer
from tests.emulator.state import Emulator

__all__ = ["Emulator", "EmulatorConfig", "EmulatorServer", "build_app"]
