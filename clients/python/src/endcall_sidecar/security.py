"""Bearer token and TLS settings for the channel, from arguments or ENDCALL_SIDECAR_* variables.

Files are read once, when the client is made, so a wrong path fails at start-up naming the
option (or variable) and the path, not on the first call of a live conversation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["Security", "resolve_security"]

ENV_TOKEN = "ENDCALL_SIDECAR_TOKEN"
ENV_TOKEN_FILE = "ENDCALL_SIDECAR_TOKEN_FILE"
ENV_TLS_CA = "ENDCALL_SIDECAR_TLS_CA"
ENV_TLS_CERT = "ENDCALL_SIDECAR_TLS_CERT"
ENV_TLS_KEY = "ENDCALL_SIDECAR_TLS_KEY"
ENV_TLS_SERVER_NAME = "ENDCALL_SIDECAR_TLS_SERVER_NAME"


@dataclass(frozen=True)
class Security:
    """What a channel sends and trusts. ``repr`` never shows the token."""

    token: str | None = None
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __repr__(self) -> str:
        return (
            f"Security(token={'<set>' if self.token else None}, "
            f"tls={self.root_certificates is not None}, "
            f"client_cert={self.certificate_chain is not None}, server_name={self.server_name!r})"
        )

    @property
    def tls(self) -> bool:
        return self.root_certificates is not None

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The metadata sent with every call: ``authorization: Bearer <token>``."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def channel(self, target: str, options: list[tuple[str, object]]) -> grpc.aio.Channel:
        if not self.tls:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )
        if self.server_name:
            options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
        return grpc.aio.secure_channel(target, credentials, options=options)


def _read(what: str, path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{what} {os.fspath(path)}: cannot read: {e.strerror or e}") from None


def resolve_security(
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    tls_server_name: str | None = None,
    env: dict[str, str] | None = None,
) -> Security:
    """Arguments win; each one left ``None`` falls back to its ENDCALL_SIDECAR_* variable."""
    env = os.environ if env is None else env
    if token is None and token_file is None:
        token = env.get(ENV_TOKEN) or None
        token_file = env.get(ENV_TOKEN_FILE) or None
    if token is not None and token_file is not None:
        raise ValueError(
            f"token and token_file ({ENV_TOKEN} and {ENV_TOKEN_FILE}): give one, not both"
        )
    if token_file is not None:
        text = _read(f"token_file ({ENV_TOKEN_FILE})", token_file).decode()
        # A trailing newline (echo, editors) is not part of the token.
        token = text[:-1] if text.endswith("\n") else text
        token = token[:-1] if token.endswith("\r") else token
        if not token:
            raise ValueError(f"token_file ({ENV_TOKEN_FILE}) {os.fspath(token_file)}: empty")
    elif token is not None and not token:
        raise ValueError(f"token ({ENV_TOKEN}): empty")

    tls_ca = tls_ca if tls_ca is not None else env.get(ENV_TLS_CA) or None
    tls_cert = tls_cert if tls_cert is not None else env.get(ENV_TLS_CERT) or None
    tls_key = tls_key if tls_key is not None else env.get(ENV_TLS_KEY) or None
    if tls_server_name is None:
        tls_server_name = env.get(ENV_TLS_SERVER_NAME) or None
    if (tls_cert is None) != (tls_key is None):
        missing = "tls_key" if tls_key is None else "tls_cert"
        raise ValueError(
            f"tls_cert and tls_key ({ENV_TLS_CERT}, {ENV_TLS_KEY}) go together: {missing} is missing"
        )
    if tls_cert is not None and tls_ca is None:
        raise ValueError(f"tls_cert ({ENV_TLS_CERT}) needs tls_ca ({ENV_TLS_CA}): TLS is off without it")
    return Security(
        token=token,
        root_certificates=_read(f"tls_ca ({ENV_TLS_CA})", tls_ca) if tls_ca else None,
        certificate_chain=_read(f"tls_cert ({ENV_TLS_CERT})", tls_cert) if tls_cert else None,
        private_key=_read(f"tls_key ({ENV_TLS_KEY})", tls_key) if tls_key else None,
        server_name=tls_server_name,
    )
