"""`scripts/install.py`: uv gets the package sources pip would use, pip's precedence kept (its variables over
its files' install section over their global one). `make install` on a clean clone runs the real thing."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("install_script", REPO / "scripts" / "install.py")
install = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install)


def test_pip_configuration_reaches_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "pip.conf"
    config.write_text(
        "[global]\nindex-url = https://mirror.example/simple\nfind-links = /wheels/global\ntimeout = 42\n"
        "[install]\nfind-links = /wheels/a /wheels/b\n"
    )
    for key in [key for key in os.environ if key.startswith("PIP_")]:  # this machine's own
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///extra/one file:///extra/two")
    monkeypatch.setenv("PIP_CONSTRAINT", "/etc/cap.txt")
    monkeypatch.delenv("UV_HTTP_TIMEOUT", raising=False)
    command, env = install.uv_command(install.pip_settings(), ["-e", ".[test]"])

    def values(flag: str) -> list[str]:
        return [command[i + 1] for i, part in enumerate(command) if part == flag]

    assert values("--index-url") == ["https://mirror.example/simple"]
    assert values("--find-links") == ["/wheels/a", "/wheels/b"]  # the install section over the global one
    assert values("--extra-index-url") == ["file:///extra/one", "file:///extra/two"]
    assert values("--constraint") == ["/etc/cap.txt"]
    assert values("--index-strategy") == ["unsafe-best-match"] and "--no-index" not in command
    assert env["UV_HTTP_TIMEOUT"] == "42" and command[-2:] == ["-e", ".[test]"]


def test_no_index_is_passed_on() -> None:
    command, _ = install.uv_command({"no-index": "true", "find-links": "/wheels"}, [])
    assert "--no-index" in command and command[command.index("--find-links") + 1] == "/wheels"


def test_proxy_and_client_certificate_reach_uv_unless_the_environment_sets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pip's `proxy` serves both schemes and its `client-cert` is uv's SSL_CLIENT_CERT; as with pip, a proxy
    already in the environment (either case) wins."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "SSL_CLIENT_CERT"):
        monkeypatch.delenv(name, raising=False)
    settings = {"proxy": "http://proxy.example:3128", "client-cert": "/etc/pip/client.pem"}
    _, env = install.uv_command(settings, [])
    assert env["HTTP_PROXY"] == env["HTTPS_PROXY"] == "http://proxy.example:3128"
    assert env["SSL_CLIENT_CERT"] == "/etc/pip/client.pem"

    monkeypatch.setenv("https_proxy", "http://mine.example:8080")
    _, env = install.uv_command(settings, [])
    assert "HTTPS_PROXY" not in env and env["https_proxy"] == "http://mine.example:8080"
    assert env["HTTP_PROXY"] == "http://proxy.example:3128"
