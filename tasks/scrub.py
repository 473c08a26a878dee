"""Keep secrets out of what runs record: MLflow params, tags and artifacts, and the run logs.

A tracking URI may carry a password (`postgresql://user:pw@db/mlflow`, `https://user:token@host`),
a flow parameter may carry a token, and both end up in params, `config.json`, sidecars and log
lines. Everything recorded passes through `scrub`; the run loggers pass through `ScrubFilter`.
What is removed is replaced by `***`, so a reader still sees that something was there.
"""

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# user:password@ in any URI (the user name is kept: it says which account, not how to log in).
_URI_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]+)@")
# Token shapes with a recognisable prefix: Hugging Face, GitHub, OpenAI-style, AWS access keys, Slack,
# JWTs, and bearer/basic authorization values.
_TOKENS = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}"
    r"|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+)"
    r"|(?i:(?<=bearer )|(?<=basic ))[A-Za-z0-9._~+/=-]{16,}"
)
# Query parameters and KEY=value pairs whose name says they are secret (`HF_TOKEN=...`, `?api_key=...`).
# Only `=`: a prompt may well say "token: a gold coin".
_SECRET_NAME = (
    r"[A-Za-z0-9_.-]*(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|authorization)[A-Za-z0-9_.-]*"
)
_SECRET_PAIR = re.compile(rf"(?i)(?P<name>{_SECRET_NAME})(?P<sep>\s*=\s*)(?P<value>[^\s&,;'\"]+)")
_SECRET_KEY = re.compile(rf"(?i)^{_SECRET_NAME}$")


def scrub(text: str) -> str:
    """`text` with passwords in URIs, token-shaped strings and `name=value` secrets masked."""
    text = _URI_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _TOKENS.sub(MASK, text)
    return _SECRET_PAIR.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)


def scrub_value(value: Any, key: str | None = None) -> Any:
    """A JSON-like value with every string scrubbed, and the value of any secret-named key masked."""
    if key is not None and _SECRET_KEY.match(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {name: scrub_value(item, str(name)) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(item) for item in value]
    return value


def scrub_mapping(values: Mapping[str, Any]) -> dict[str, str]:
    """Params or tags: every value scrubbed as text."""
    return {key: str(scrub_value(value, key)) for key, value in values.items()}


class ScrubFilter(logging.Filter):
    """Rewrites each record's message with `scrub`, so no handler (console, Prefect API) sees a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's to report
            return True
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_scrubber(*names: str) -> None:
    """Attach one ScrubFilter to every handler of the named loggers (default: Prefect's and the root)."""
    for name in names or ("prefect", ""):
        for handler in logging.getLogger(name or None).handlers:
            if not any(isinstance(existing, ScrubFilter) for existing in handler.filters):
                handler.addFilter(ScrubFilter())
