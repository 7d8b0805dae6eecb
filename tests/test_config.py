"""Configuration: SPEC's keys, types and defaults; errors that name the key; the CLI's exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pypi_mirror.config import (
    ConfigError,
    config_from_dict,
    load_config,
    parse_duration,
    parse_listen,
    parse_size,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1k", 1024),
        ("1KB", 1024),
        ("512g", 512 << 30),
        ("2t", 2 << 40),
        ("1.5m", 3 << 19),
        ("100", 100),
        (4096, 4096),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("250ms", 0.25)],
)
def test_durations(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


def test_listen_forms() -> None:
    assert parse_listen(":8080") == (None, 8080)
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::]:8080") == ("::", 8080)


def test_defaults_match_spec(tmp_path: Path) -> None:
    config = config_from_dict({"repo_path": str(tmp_path)})
    assert config.listen == ":8080" and config.prefix == "/pypi"
    assert config.upstream.effective_redirect_url == config.upstream.packages_url
    assert config.fallback.default == "302"
    assert config.cache.size_limit == 512 << 30 and config.cache.filesize_limit == 4 << 30
    assert config.cache.min_vote_count == 2
    assert config.cache.vote_window == 7 * 86400 and config.cache.dedup_window == 300
    assert config.cache.size_db_ttl == 2 * 86400 and config.cache.tiers is None
    assert config.sync.retry == 3 and config.sync.download_error_threshold == 5
    assert config.sync.user_agent == "pypi-mirror/1.0" and config.sync.concurrent_downloads == 4
    assert config.log.path == "" and config.log.format == "mirror-json"
    timeouts = config.timeouts
    assert (timeouts.read, timeouts.write, timeouts.idle, timeouts.upstream) == (30, 120, 60, 60)


def test_example_config_is_valid_and_complete(tmp_path: Path) -> None:
    data = yaml.safe_load((REPO_ROOT / "config.example.yaml").read_text())
    config = config_from_dict(data)
    assert config.fallback.rules[0].mode == "proxy"
    text = (REPO_ROOT / "config.example.yaml").read_text()
    for key in ("redirect_url", "proxy", "tls", "tiers", "size_db_ttl", "serials_source"):
        assert key in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"cache": {"tiers": [{"path": "{tmp}", "size_limit": "1g"},
                                 {"path": "{tmp}", "size_limit": "12x"}]}},
            'cache.tiers[1].size_limit: invalid size "12x"',
        ),
        ({"cache": {"vote_window": "7x"}}, 'cache.vote_window: invalid duration "7x"'),
        ({"listen": "nope"}, 'listen: invalid listen address "nope"'),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"cache": {"min_vote_count": "many"}}, "cache.min_vote_count"),
        ({"fallback": {"default": "teleport"}}, "fallback.default"),
        ({"trusted_proxies": ["10.0.0.0/99"]}, 'trusted_proxies: invalid CIDR "10.0.0.0/99"'),
        ({"upstream": {"pypi_url": "ftp://x"}}, "upstream.pypi_url"),
        ({"upstream": {"proxy": "gopher://x"}}, "upstream.proxy"),
        ({"cache": {"tiers": [{"path": "/does/not/exist", "size_limit": "1g"}]}},
         "cache.tiers[0].path"),
        ({"log": {"format": "xml"}}, "log.format"),
    ],
)  # fmt: skip
def test_errors_name_the_key(tmp_path: Path, data: dict, message: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(data).replace("{tmp}", str(tmp_path)))
    with pytest.raises(ConfigError) as error:
        config_from_dict({"repo_path": str(tmp_path), **data})
    assert message in str(error.value)


def test_repo_path_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repo_path: required"):
        config_from_dict({})


def test_load_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_no_config_means_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYPI_MIRROR_HOME", str(tmp_path / "home"))
    config = load_config(None)
    assert config.repo_path == tmp_path / "home"
    assert config.upstream.pypi_url == "https://pypi.org"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypi_mirror", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_bad_config_exits_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text(f"repo_path: {tmp_path}/repo\ncache:\n  size_limit: 12x\n")
    result = run_cli("serve", "-c", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert 'cache.size_limit: invalid size "12x"' in result.stderr
    assert not (tmp_path / "repo").exists()
    result = run_cli("sync", "-c", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr
    bad.write_text("listen: [unclosed\n")
    result = run_cli("serve", cwd=tmp_path)  # ./config.yaml is picked up without -c
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_cli_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "config.yaml").write_text(
            f"repo_path: {tmp_path}/repo\nlisten: 127.0.0.1:{port}\n"
        )
        result = run_cli("serve", cwd=tmp_path)
    assert result.returncode == 2
    assert f"listen: cannot bind 127.0.0.1:{port}" in result.stderr
