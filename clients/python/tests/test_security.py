"""Token and TLS against the real sidecar binary: every call (watch streams included) carries
the token, a missing or wrong one fails with Unauthenticated, and TLS/mTLS connect with the
certificates scripts/test-pki makes (openssl CLI) in a temporary directory."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from endcall_sidecar import DirectiveKind, EndCallClient, SidecarError, Unauthenticated
from endcall_sidecar.security import resolve_security

from conftest import REPO

TOKEN = "py-client-token-0123456789"


def sid(name: str) -> str:
    return f"sec-{name}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    subprocess.run([str(REPO / "scripts" / "test-pki"), str(out)], check=True)
    return out


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


async def _ends_with_shutdown(c: EndCallClient, s: str) -> None:
    """A full goodbye through a reconnecting watcher: unary calls and the stream all carry the
    token."""
    await c.end_call(s, "sp1")
    watcher = c.watch(s)
    await c.on_speech_created(s, "sp1")
    await c.on_speech_done(s, "sp1")
    async for d in watcher:
        assert d.kind == DirectiveKind.SHUTDOWN_SESSION, d
        break
    else:
        pytest.fail("the watch stream ended without a directive")


async def test_a_token_is_sent_on_every_call_and_stream(start_sidecar, token_file, monkeypatch) -> None:
    sc = start_sidecar("--auth-token-file", str(token_file))
    async with EndCallClient(sc.address, token=TOKEN) as c:
        await _ends_with_shutdown(c, sid("arg"))
    # The same from the variables, as SidecarEndCallTool's own client picks them up.
    monkeypatch.setenv("ENDCALL_SIDECAR_TOKEN_FILE", str(token_file))
    async with EndCallClient(sc.address) as c:
        await _ends_with_shutdown(c, sid("env"))


async def test_without_or_with_a_wrong_token_calls_fail_clearly(start_sidecar, token_file) -> None:
    sc = start_sidecar("--auth-token-file", str(token_file))
    async with EndCallClient(sc.address) as c:
        with pytest.raises(Unauthenticated) as missing:
            await c.end_call(sid("missing"), "sp1")
        assert "missing authorization metadata" in str(missing.value)
        # A watch stream is refused too, at once (not retried as if the server were down).
        with pytest.raises(Unauthenticated):
            async for _ in c.watch(sid("missing")):
                pass
    async with EndCallClient(sc.address, token="not-" + TOKEN) as c:
        with pytest.raises(Unauthenticated) as wrong:
            await c.end_call(sid("wrong"), "sp1")
        assert "invalid bearer token" in str(wrong.value)
        assert TOKEN not in str(wrong.value)


async def test_tls_and_mutual_tls(start_sidecar, pki, token_file) -> None:
    sc = start_sidecar(
        "--tls-cert", str(pki / "server.pem"),
        "--tls-key", str(pki / "server.key"),
        "--tls-client-ca", str(pki / "client-ca.pem"),
        "--auth-token-file", str(token_file),
    )
    secure = dict(
        token=TOKEN,
        tls_ca=str(pki / "ca.pem"),
        tls_cert=str(pki / "client.pem"),
        tls_key=str(pki / "client.key"),
    )
    async with EndCallClient(sc.address, timeout=5.0, **secure) as c:
        await _ends_with_shutdown(c, sid("mtls"))
    # The server's name in place of its address.
    async with EndCallClient(f"localhost:{sc.address.rsplit(':', 1)[1]}", **secure) as c:
        await c.get_tool()
    # No client certificate: the handshake is refused.
    async with EndCallClient(sc.address, timeout=5.0, token=TOKEN, tls_ca=str(pki / "ca.pem")) as c:
        with pytest.raises(SidecarError) as refused:
            await c.get_tool()
        assert not isinstance(refused.value, Unauthenticated)
    # Trusting the wrong CA (the client CA did not sign the server's certificate).
    async with EndCallClient(
        sc.address, timeout=5.0, **{**secure, "tls_ca": str(pki / "client-ca.pem")}
    ) as c:
        with pytest.raises(SidecarError):
            await c.get_tool()
    # Plaintext to a TLS port.
    async with EndCallClient(sc.address, timeout=5.0, token=TOKEN) as c:
        with pytest.raises(SidecarError):
            await c.get_tool()


def test_settings_errors_name_the_option_and_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ENDCALL_SIDECAR_TOKEN_FILE.*/nonexistent/token"):
        resolve_security(token_file="/nonexistent/token", env={})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        resolve_security(token_file=str(empty), env={})
    with pytest.raises(ValueError, match="not both"):
        resolve_security(env={"ENDCALL_SIDECAR_TOKEN": "a", "ENDCALL_SIDECAR_TOKEN_FILE": str(empty)})
    with pytest.raises(ValueError, match="tls_key is missing"):
        resolve_security(tls_ca="/x", tls_cert="/y", env={})
    with pytest.raises(ValueError, match="ENDCALL_SIDECAR_TLS_CA.*/nonexistent/ca.pem"):
        resolve_security(env={"ENDCALL_SIDECAR_TLS_CA": "/nonexistent/ca.pem"})
    settings = resolve_security(env={"ENDCALL_SIDECAR_TOKEN": "abc"})
    assert settings.metadata() == (("authorization", "Bearer abc"),)
    assert "abc" not in repr(settings)
