"""Release versions that may go into upstream URLs (names.is_valid_version, UpstreamUrls).

A version is put into ``/pypi/<name>/<version>/json`` upstream; ``..`` there would make the
request ``/pypi/json``. The validator must pass every real PyPI version and nothing that could
be more than one plain path segment.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from urllib.parse import quote, unquote, urljoin

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from packaging.version import VERSION_PATTERN, Version
from yarl import URL

from pypi_mirror.config import Config
from pypi_mirror.names import is_valid_version
from pypi_mirror.upstream import UpstreamUrls
from tests.fakepypi import FakePyPI
from tests.mirror import Mirror, http

# Real versions from PyPI: PEP 440 ones (normalised or not) and pre-PEP 440 legacy ones.
REAL_VERSIONS = [
    "1",
    "1.0",
    "0.1",
    "2.34.0.dev1",
    "2026.10.19.post1",
    "1!2.0",
    "1.0+local.7",
    "2.1.0+cu121",
    "1.0.post1",
    "1.0a1",
    "1.0b2",
    "1.0rc2",
    "1.0.dev0",
    "1.2.3.4.5.6",
    "v1.0",
    "V1.0",
    "1.0-beta",
    "1.0-beta-1",
    "1.0_rc1",
    "0.1_rc",
    "1.0RC1",
    "1.0-1",
    "1.0.post",
    "1.0a",
    "0.6c11",
    "2004d",
    "1.0.0-SNAPSHOT",
    "0.1dev-r1234",
    "1.2.3c1",
    "1.0.0.final",
]

NOT_VERSIONS = [
    "",
    ".",
    "..",
    "...",
    "1..0",
    "1.0..",
    "../json",
    "..%2Fjson",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "1.0/..",
    "1.0/",
    "/1.0",
    "1.0\\..",
    " 1.0",
    "1.0 ",
    "1.0\n",
    "1.0\t",
    "1.0?x",
    "1.0#x",
    "1.0;x",
    "1.0~beta",
    "-1.0",
    "1.0-",
    ".1",
    "1.0.",
    "+local",
    "1.0+",
    "1" * 129,
    "١٫٠",  # Arabic-Indic digits: \d would take them, URLs would not
    "1.0\x00",
    "1.0é",
]

# What may appear in one path segment without escaping and with no special meaning.
_SEGMENT_SAFE = set(string.ascii_letters + string.digits + "-._~!+")


@pytest.mark.parametrize("version", REAL_VERSIONS)
def test_real_versions_are_valid(version: str) -> None:
    assert is_valid_version(version)


@pytest.mark.parametrize("version", NOT_VERSIONS)
def test_unsafe_or_malformed_versions_are_rejected(version: str) -> None:
    assert not is_valid_version(version)


def _assert_safe_segment(text: str) -> None:
    assert set(text) <= _SEGMENT_SAFE
    assert text not in (".", "..") and ".." not in text
    assert unquote(text) == text  # no escapes to decode into "/" or "."
    assert quote(text, safe="!+") == text  # nothing a URL would need to escape
    base = "https://pypi.example/pypi/demo/"
    # Neither URL resolution nor yarl's normalisation moves the request elsewhere.
    assert urljoin(base, f"{text}/json") == f"{base}{text}/json"
    url = URL(f"{base}{text}/json")
    assert url.path == f"/pypi/demo/{text}/json"
    assert url.raw_path == f"/pypi/demo/{text}/json"


@given(st.text(alphabet=string.ascii_letters + string.digits + "-._~!+/%?# \\", max_size=24))
@example("..")
@example("%2e%2e")
@example("1.0/../x")
def test_everything_accepted_is_one_plain_path_segment(text: str) -> None:
    if is_valid_version(text):
        _assert_safe_segment(text)


@given(st.text(max_size=40))
def test_everything_accepted_from_any_text_is_one_plain_path_segment(text: str) -> None:
    if is_valid_version(text):
        _assert_safe_segment(text)


_PEP440 = re.compile(VERSION_PATTERN, re.VERBOSE | re.IGNORECASE)


@given(st.from_regex(_PEP440, fullmatch=True))
def test_packaging_versions_are_valid(text: str) -> None:
    """Whatever packaging reads is accepted, but for spellings with a separator at the end
    ("1.0a.") or two in a row ("0a..dev"): "..", even harmless, is refused on principle, and
    such a version's normalised form, which PyPI answers to as well, always passes."""
    normalised = str(Version(text))  # may be longer: "1-7" is "1.post7"
    if len(normalised) <= 128:
        assert is_valid_version(normalised), normalised
    if len(text) <= 128 and text[-1].isalnum() and text.isascii() and ".." not in text:
        assert is_valid_version(text), text


@given(
    epoch=st.integers(0, 5),
    release=st.lists(st.integers(0, 10**8), min_size=1, max_size=6),
    pre=st.none() | st.tuples(st.sampled_from(["a", "b", "rc"]), st.integers(0, 99)),
    post=st.none() | st.integers(0, 99),
    dev=st.none() | st.integers(0, 99),
    local=st.none() | st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=1),
)
def test_normalised_pep440_versions_are_valid(
    epoch: int,
    release: list[int],
    pre: tuple[str, int] | None,
    post: int | None,
    dev: int | None,
    local: list[str] | None,
) -> None:
    text = f"{epoch}!" if epoch else ""
    text += ".".join(map(str, release))
    text += f"{pre[0]}{pre[1]}" if pre else ""
    text += f".post{post}" if post is not None else ""
    text += f".dev{dev}" if dev is not None else ""
    text += "+" + ".".join(local) if local else ""
    normalised = str(Version(text))
    if len(normalised) <= 128:
        assert is_valid_version(normalised)


# -- the URL builders ----------------------------------------------------------------------


@pytest.fixture
def urls(tmp_path: Path) -> UpstreamUrls:
    config = Config.model_validate(
        {
            "repo_path": str(tmp_path),
            "upstream": {
                "pypi_url": "https://pypi.example",
                "packages_url": "https://files.example",
            },
        }
    )
    return UpstreamUrls(config)


def test_release_json_builds_the_release_url(urls: UpstreamUrls) -> None:
    assert urls.release_json("demo-pkg", "1.0") == "https://pypi.example/pypi/demo-pkg/1.0/json"
    assert urls.release_json("demo-pkg", "1!2.0+x.1").endswith("/demo-pkg/1!2.0+x.1/json")


@pytest.mark.parametrize("version", ["..", "%2e%2e", "%2E%2E", ".", "../..", "1.0/..", "", "a b"])
def test_release_json_refuses_unsafe_versions(urls: UpstreamUrls, version: str) -> None:
    with pytest.raises(ValueError):
        urls.release_json("demo-pkg", version)


@pytest.mark.parametrize("name", ["..", "Demo_Pkg", "demo/pkg", "%2e%2e", "", "-demo"])
def test_release_json_refuses_bad_names(urls: UpstreamUrls, name: str) -> None:
    with pytest.raises(ValueError):
        urls.release_json(name, "1.0")
    with pytest.raises(ValueError):
        urls.project_json(name)


def test_file_urls_refuse_what_is_not_a_file_path(urls: UpstreamUrls) -> None:
    good = "ab/cd/" + "0" * 60 + "/demo_pkg-1.0-py3-none-any.whl"
    assert urls.file(good) == f"https://files.example/packages/{good}"
    assert urls.file(good + ".metadata").endswith(".whl.metadata")
    assert urls.redirect_file(good).endswith(f"/packages/{good}")
    for bad in ["../../pypi/json", "ab/cd/" + "0" * 60 + "/..", "ab/cd/x/f.whl", ""]:
        with pytest.raises(ValueError):
            urls.file(bad)
        with pytest.raises(ValueError):
            urls.redirect_file(bad)


# -- end to end: a client cannot steer the upstream request ---------------------------------


def test_dot_segment_versions_never_reach_the_upstream(tmp_path: Path, fake_pypi: FakePyPI) -> None:
    fake_pypi.add_wheel("proj", "1.0")
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url) as mirror:
        for path in ["../json", "%2e%2e/json", "%2E%2E/json", "./json", ".%2e/json", "..%2fjson"]:
            reply = http(f"{mirror.base}/proj/{path}")
            assert reply.status in (400, 404), (path, reply.status)
        assert http(f"{mirror.base}/proj/1.0/json").status == 200
    # the release is served from the held project document (fetched once); nothing else asked
    assert [r.path for r in fake_pypi.requests if r.path.startswith("/pypi")] == ["/pypi/proj/json"]
