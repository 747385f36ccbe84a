"""Encryption of provider secrets at rest (Fernet, keyed from `PARLEY_SECRET_KEY`)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    """Seals and opens small JSON secrets (auth tokens, API keys) for storage."""

    def __init__(self, secret_key: str) -> None:
        # Derive a separate key so the raw secret key is never used for two purposes.
        digest = hashlib.sha256(b"parley/secret-box/v1\x00" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, secrets: Mapping[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(dict(secrets), sort_keys=True).encode()).decode()

    def open(self, token: str) -> dict[str, str]:
        if not token:
            return {}
        try:
            data = json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as e:
            raise ValueError("stored secrets cannot be decrypted: was PARLEY_SECRET_KEY changed?") from e
        return {str(k): str(v) for k, v in data.items()}
