"""API keys, stored hashed.

A keys file holds one key a line as `sha256:HEX [label]` (blank lines and `#` comments allowed),
so the file on the server never contains a usable key. Keys are long random tokens, for which one
SHA-256 is enough: there is nothing to guess a password-style dictionary against.
Clients send a key as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from feedbackgen.errors import ConfigError

KEY_LINE = re.compile(r"^sha256:([0-9a-f]{64})(?:\s+(.*))?$")


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "fbg_" + secrets.token_urlsafe(32)


def read_key_file(path: str | Path) -> dict[str, str]:
    """{hash: label} from a keys file; a malformed line fails naming its number."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"API keys file {path} does not exist; add a key with `feedbackgen api-key {path}`")
    keys = {}
    # split on "\n" only: str.splitlines would also break a label at U+2028, \x85, ... and shift line numbers
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = KEY_LINE.match(line)
        if not m:
            raise ConfigError(f"{path}, line {n}: expected 'sha256:<64 hex digits> [label]' (keys are stored "
                              "hashed; add one with `feedbackgen api-key FILE`)")
        keys["sha256:" + m.group(1)] = m.group(2) or f"key on line {n}"
    if not keys:
        raise ConfigError(f"API keys file {path} holds no key")
    return keys


def add_key(path: str | Path, label: str = "") -> str:
    """Make a new key, append its hash to `path` (created readable by its owner only), return the key."""
    path = Path(path)
    key = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(f"{hash_key(key)} {label}".rstrip() + "\n")
    return key


def key_from_headers(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or None


def is_valid(key: str | None, hashes: dict[str, str]) -> bool:
    if not key:
        return False
    digest = hash_key(key)
    # compare against every stored hash so the time taken does not say how many matched where
    return any([hmac.compare_digest(digest, h) for h in hashes])
