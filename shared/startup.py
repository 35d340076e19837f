"""Service start-up: bad configuration ends the process with exit code 2 and one line, never a traceback."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from pydantic import ValidationError

from shared.config import PierConfig
from shared.errors import ConfigError

T = TypeVar("T")

EXIT_CONFIG = 2


def config_error_line(exc: ConfigError | ValidationError, env_prefix: str = "PIER_") -> str:
    """One line naming the key and the value, for either error kind."""
    if isinstance(exc, ConfigError):
        return mask_secrets(str(exc))
    err = exc.errors()[0]
    key = env_prefix + "_".join(str(p) for p in err["loc"]).upper()
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if any(word in key for word in _SECRET_WORDS):
        value = "***"
    elif isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\1***@", value)
    return mask_secrets(str(ConfigError(key, value, msg)))


# A setting whose value is a secret is never shown; a URL's password is masked wherever it appears in the line.
_SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@/\s]*@")


def mask_secrets(line: str) -> str:
    """`line` with any URL password replaced by `***` (config errors and start-up logs show URLs)."""
    return _URL_PASSWORD.sub(r"\1***@", line)


def fail(line: str) -> NoReturn:
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


def load_or_exit(build: Callable[[], T]) -> T:
    """Run `build` (settings + config); on a configuration error print one line and exit 2."""
    try:
        return build()
    except (ConfigError, ValidationError) as exc:
        fail(config_error_line(exc))


def report_ignored(config: PierConfig) -> None:
    """Log the config file's top-level keys that nothing reads (after logging is set up)."""
    for key in config.ignored_keys:
        logging.getLogger("pier.config").warning(
            "config file %s: top-level key %r is not used; ignored", config.source, key
        )
