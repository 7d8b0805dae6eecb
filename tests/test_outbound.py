"""Outbound requests honour upstream.proxy and sync.user_agent; TLS serving."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.fakepypi import FakePyPI
from tests.forward_proxy import HttpProxy, Socks5Proxy
from tests.mirror import Mirror, http


@pytest.fixture
def upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("via-proxy", "1.0")
    return fake_pypi


@pytest.mark.parametrize("proxy_class", [HttpProxy, Socks5Proxy])
def test_outbound_requests_use_the_configured_proxy(
    tmp_path: Path, upstream: FakePyPI, proxy_class: type
) -> None:
    with (
        proxy_class() as proxy,
        Mirror(
            tmp_path,
            upstream.url,
            upstream.files_url,
            upstream={"proxy": proxy.url},
            fallback={"default": "proxy"},
            sync={"user_agent": "mirror-test-agent/7"},
        ) as mirror,
    ):
        assert http(mirror.simple + "via-proxy/").status == 200
        wheel = upstream.files("via-proxy")[0]
        assert http(f"{mirror.base}/packages/{wheel.path}").body == wheel.content
    assert proxy.targets  # the session went through the proxy (later requests reuse it)
    assert all(str(upstream.port) in target for target in proxy.targets)
    seen = upstream.requests_matching("/pypi/via-proxy/json") + upstream.requests_matching(
        wheel.filename
    )
    assert seen and {r.headers.get("User-Agent") for r in seen} == {"mirror-test-agent/7"}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path: Path, upstream: FakePyPI) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with Mirror(
        tmp_path, upstream.url, upstream.files_url, tls={"cert": str(cert), "key": str(key)}
    ) as mirror:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        url = mirror.simple.replace("http://", "https://") + "via-proxy/"
        with urllib.request.urlopen(url, context=context, timeout=10) as reply:
            assert reply.status == 200
            assert b"via_proxy-1.0" in reply.read()
