"""Secrets never reach MLflow params, tags or printed lines: what counts as one, and how it is hidden.

A name (a config key, an env var, a command-line flag) is secret when one of its segments, split on `.`, `_` and
`-`, is a secret word (token, secret, password, ...) or two adjacent segments make one (api_key, access_key):
`tracking.token` and `AWS_SECRET_ACCESS_KEY` are, `data.tokenizer` and `train.max_tokens` are not. A URI's
password (`postgresql://user:PASSWORD@host`) is hidden wherever it appears.
"""
from __future__ import annotations

import re

HIDDEN = "***"
WORDS = {"token", "secret", "password", "passwd", "pwd", "apikey", "credential", "credentials", "passphrase"}
PAIRS = {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("session", "key"),
         ("auth", "key")}
_URI_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s/:@]*):([^\s/@]+)@", re.I)


def is_secret(name: str) -> bool:
    """Whether a key, env var or flag name holds a secret (whole segments only)."""
    parts = [p for p in re.split(r"[._-]+", name.lower()) if p]
    return bool(WORDS & set(parts)) or any(pair in PAIRS for pair in zip(parts, parts[1:]))


def scrub(text: str) -> str:
    """`text` with every URI password replaced by ***."""
    return _URI_PASSWORD.sub(rf"\1:{HIDDEN}@", text)


def value(name: str, value) -> str:
    """What may be shown of `name`'s value: *** for a secret name, else the value with URI passwords hidden."""
    return HIDDEN if is_secret(name) else scrub(str(value))


def params(items: dict) -> dict[str, str]:
    """Flat params ({key: value}) safe to log."""
    return {k: value(k, v) for k, v in items.items()}


def nested(data: dict, prefix: str = "") -> dict:
    """A nested config dict of the same shape, its secret values hidden."""
    return {k: nested(v, f"{prefix}{k}.") if isinstance(v, dict) else
            (v if isinstance(v, (bool, int, float)) and not is_secret(prefix + k) else value(prefix + k, v))
            for k, v in data.items()}


def argv(args: list[str]) -> list[str]:
    """A command line safe to log: `--api-key X`, `--token=X`, `NAME=X` overrides with a secret name, URI passwords."""
    shown, hide_next = [], False
    for arg in args:
        name, sep, rest = arg.lstrip("-").partition("=")
        if hide_next:
            shown.append(HIDDEN)
        elif sep and is_secret(name):
            shown.append(arg[:len(arg) - len(rest)] + HIDDEN)
        else:
            shown.append(scrub(arg))
        hide_next = arg.startswith("-") and not sep and is_secret(name)
    return shown
