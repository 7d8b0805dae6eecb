"""The one renderer: PyPI's JSON API document ─► our PEP 503 HTML and PEP 691 JSON pages.

Real documents from PyPI (tests/data/projects) are rendered and checked against PyPI's own
PEP 691 page for the same project; synthetic documents cover the cases PyPI rarely shows.
"""

from __future__ import annotations

import copy
import hashlib
import re
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pypi_mirror.index.render import (
    IndexFile,
    RenderError,
    index_files,
    parse_pypi_json,
    render_project,
    render_root_html,
    render_root_json,
    sorted_versions,
)
from pypi_mirror.names import file_path_from_url

DATA = Path(__file__).parent / "data"
PROJECTS = ["six", "flask-login", "requests", "pip", "iniconfig", "certifi"]
UPLOAD_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def pypi_body(project: str) -> bytes:
    return (DATA / "projects" / project / "pypi.json").read_bytes()


def pypi_simple(project: str) -> dict[str, Any]:
    return orjson.loads((DATA / "projects" / project / "simple.v1.json").read_bytes())


def upstream_entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["filename"]: entry for files in doc["releases"].values() for entry in files}


class Page(HTMLParser):
    """What an installer sees in an HTML page: anchors with attributes, meta tags, comments."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: dict[str, str | None] = {}
        self.title = ""
        self.comments: list[str] = []
        self._anchor: dict[str, str | None] | None = None
        self._text = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._anchor, self._text = dict(attrs), ""
        elif tag == "meta":
            values = dict(attrs)
            self.meta[values["name"] or ""] = values.get("content")
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._anchor is not None:
            self.anchors.append((self._anchor, self._text))
            self._anchor = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._anchor is not None:
            self._text += data
        if self._in_title:
            self.title += data

    def handle_comment(self, data: str) -> None:
        self.comments.append(data)


def parse_html(html: bytes) -> Page:
    page = Page()
    page.feed(html.decode())
    page.close()
    return page


def file_entry(filename: str, **overrides: Any) -> dict[str, Any]:
    """A file entry shaped like PyPI's, with a path derived from the filename."""
    digest = hashlib.sha256(filename.encode()).hexdigest()
    blake = hashlib.blake2b(filename.encode(), digest_size=32).hexdigest()
    entry: dict[str, Any] = {
        "filename": filename,
        "url": f"https://files.pythonhosted.org/packages/{blake[:2]}/{blake[2:4]}/{blake[4:]}/"
        f"{filename}",
        "digests": {"sha256": digest, "md5": "0" * 32},
        "size": 1234,
        "requires_python": None,
        "upload_time": "2024-01-02T03:04:05",
        "upload_time_iso_8601": "2024-01-02T03:04:05.123456Z",
        "yanked": False,
        "yanked_reason": None,
        "core-metadata": False,
    }
    entry.update(overrides)
    return entry


def document(releases: dict[str, list[dict[str, Any]]], *, name: str = "Demo_Pkg") -> dict:
    return {"info": {"name": name}, "last_serial": 4242, "releases": releases, "urls": []}


# -- against PyPI's own PEP 691 pages ---------------------------------------------------------


@pytest.mark.parametrize("project", PROJECTS)
def test_json_page_matches_pypi_simple_json(project: str) -> None:
    rendered = render_project(pypi_body(project))
    ours = orjson.loads(rendered.json)
    theirs = pypi_simple(project)

    assert rendered.name == ours["name"] == theirs["name"] == project
    assert ours["meta"] == {
        "api-version": "1.1",
        "_last-serial": int(theirs["meta"]["_last-serial"]),
    }
    assert rendered.serial == ours["meta"]["_last-serial"]
    assert set(ours["versions"]) == set(theirs["versions"])

    theirs_by_name = {entry["filename"]: entry for entry in theirs["files"]}
    assert [entry["filename"] for entry in ours["files"]] == sorted(theirs_by_name)
    for entry in ours["files"]:
        reference = theirs_by_name[entry["filename"]]
        assert entry["hashes"] == reference["hashes"]
        assert entry["size"] == reference["size"]
        assert entry["yanked"] == reference["yanked"]
        assert entry["requires-python"] == reference["requires-python"]
        # Same instant; ours always in PEP 700's six-digit form (PyPI sometimes drops ".000000").
        assert UPLOAD_TIME_RE.fullmatch(entry["upload-time"])
        assert datetime.fromisoformat(entry["upload-time"]) == datetime.fromisoformat(
            reference["upload-time"]
        )
        assert "dist-info-metadata" not in entry


@pytest.mark.parametrize(("project", "shape"), [("six", "https://"), ("pip", "../../packages/")])
def test_links_are_relative_for_absolute_and_relative_upstream_urls(
    project: str, shape: str
) -> None:
    doc = parse_pypi_json(pypi_body(project))
    upstream = upstream_entries(doc)
    assert all(entry["url"].startswith(shape) for entry in upstream.values())

    ours = orjson.loads(render_project(doc).json)
    theirs = {entry["filename"]: entry["url"] for entry in pypi_simple(project)["files"]}
    for entry in ours["files"]:
        assert entry["url"].startswith("../../packages/")
        assert "#" not in entry["url"]
        path = entry["url"].removeprefix("../../packages/")
        # The same file as PyPI links to (absolute on its file host), under our /packages/.
        assert theirs[entry["filename"]].endswith("/packages/" + path)
        assert path == file_path_from_url(upstream[entry["filename"]]["url"])


@pytest.mark.parametrize("project", PROJECTS)
def test_html_anchors_agree_with_json_page(project: str) -> None:
    rendered = render_project(pypi_body(project))
    page = parse_html(rendered.html)
    files = orjson.loads(rendered.json)["files"]

    assert rendered.html.startswith(b"<!DOCTYPE html>")
    assert page.meta["pypi:repository-version"] == "1.1"
    assert page.title == f"Links for {project}"
    assert f"<h1>Links for {project}</h1>".encode() in rendered.html
    assert rendered.html.rstrip().endswith(f"<!--SERIAL {rendered.serial}-->".encode())
    assert page.comments == [f"SERIAL {rendered.serial}"]

    assert len(page.anchors) == len(files)
    for (attrs, text), entry in zip(page.anchors, files, strict=True):
        assert text == entry["filename"]
        assert attrs["href"] == entry["url"] + "#sha256=" + entry["hashes"]["sha256"]
        assert attrs.get("data-requires-python") == entry["requires-python"]
        if entry["yanked"] is False:
            assert "data-yanked" not in attrs
        else:
            assert attrs["data-yanked"] == ("" if entry["yanked"] is True else entry["yanked"])


@pytest.mark.parametrize("project", PROJECTS)
def test_core_metadata_advertised_exactly_where_upstream_does(project: str) -> None:
    doc = parse_pypi_json(pypi_body(project))
    upstream = upstream_entries(doc)
    rendered = render_project(doc)
    page = parse_html(rendered.html)
    files = orjson.loads(rendered.json)["files"]
    advertised = 0
    for (attrs, _text), entry in zip(page.anchors, files, strict=True):
        value = upstream[entry["filename"]].get("core-metadata")
        if value:
            advertised += 1
            assert entry["core-metadata"] == {"sha256": value["sha256"]}
            assert attrs["data-core-metadata"] == "sha256=" + value["sha256"]
            assert attrs["data-dist-info-metadata"] == "sha256=" + value["sha256"]
        else:
            assert entry["core-metadata"] is False
            assert "data-core-metadata" not in attrs
            assert "data-dist-info-metadata" not in attrs
    if project in ("pip", "certifi"):
        assert advertised == 0
    else:
        assert advertised > 0
    assert b'"dist-info-metadata"' not in rendered.json


@pytest.mark.parametrize(
    ("project", "wheel"),
    [("six", "six-1.17.0-py2.py3-none-any.whl"), ("requests", "requests-2.34.2-py3-none-any.whl")],
)
def test_advertised_hash_is_that_of_the_metadata_file(project: str, wheel: str) -> None:
    metadata = (DATA / "metadata" / f"{wheel}.metadata").read_bytes()
    rendered = render_project(pypi_body(project))
    by_name = {file.filename: file for file in rendered.files}
    expected = hashlib.sha256(metadata).hexdigest()
    assert by_name[wheel].metadata_sha256 == expected
    assert by_name[wheel].sha256 != expected  # the wheel's own hash is a different thing
    assert f'data-core-metadata="sha256={expected}"'.encode() in rendered.html
    entry = next(e for e in orjson.loads(rendered.json)["files"] if e["filename"] == wheel)
    assert entry["core-metadata"] == {"sha256": expected}


def test_requires_python_is_escaped_in_html() -> None:
    html = render_project(pypi_body("requests")).html.decode()
    assert 'data-requires-python="&gt;=3.7, &lt;4">requests-2.28.0.tar.gz</a>' in html
    assert ">=3.7" not in html


def test_yanked_with_and_without_reason() -> None:
    requests = render_project(pypi_body("requests"))
    pip = render_project(pypi_body("pip"))
    reason = "Yanked due to conflicts with CVE-2024-35195 mitigation"

    requests_files = {e["filename"]: e for e in orjson.loads(requests.json)["files"]}
    assert requests_files["requests-2.32.0.tar.gz"]["yanked"] == reason
    assert requests_files["requests-2.31.0.tar.gz"]["yanked"] is False
    assert f'data-yanked="{reason}">requests-2.32.0.tar.gz</a>'.encode() in requests.html

    pip_files = {e["filename"]: e for e in orjson.loads(pip.json)["files"]}
    assert pip_files["pip-20.0.tar.gz"]["yanked"] is True
    assert pip_files["pip-21.2.tar.gz"]["yanked"] == "See https://github.com/pypa/pip/issues/8711"
    assert b'data-yanked="">pip-20.0.tar.gz</a>' in pip.html
    by_name = {file.filename: file for file in pip.files}
    assert by_name["pip-20.0.tar.gz"].yanked is True
    assert by_name["pip-19.3.1.tar.gz"].yanked is False


def test_versions_include_releases_without_files() -> None:
    versions = orjson.loads(render_project(pypi_body("requests")).json)["versions"]
    assert {"0.0.1", "0.12.01", "2.15.0"} <= set(versions)  # releases without any file
    assert versions.index("0.2.0") < versions.index("0.10.0") < versions.index("2.34.2")


# -- synthetic documents ----------------------------------------------------------------------


def test_versions_sorted_by_pep440_with_legacy_first() -> None:
    releases = {
        v: [] for v in ["1.0", "10.0", "foo-bar", "0.9", "2.0rc1", "1.0.post1", "2004d", "1.0a1"]
    }
    releases["foo-bar"] = [file_entry("demo_pkg-foo-bar.tar.gz")]
    rendered = render_project(document(releases))
    assert orjson.loads(rendered.json)["versions"] == [
        "2004d",
        "foo-bar",
        "0.9",
        "1.0a1",
        "1.0",
        "1.0.post1",
        "2.0rc1",
        "10.0",
    ]
    assert [f.version for f in rendered.files] == ["foo-bar"]
    assert sorted_versions([]) == []


def test_relative_and_absolute_upstream_urls_map_to_the_same_link() -> None:
    absolute = file_entry("demo_pkg-1.0.tar.gz")
    relative = copy.deepcopy(absolute)
    relative["url"] = absolute["url"].replace(
        "https://files.pythonhosted.org/packages/", "../../packages/packages/"
    )
    one = render_project(document({"1.0": [absolute]}))
    two = render_project(document({"1.0": [relative]}))
    assert one.html == two.html
    assert one.json == two.json
    assert one.files[0].path == file_path_from_url(absolute["url"])


def test_files_without_a_pypi_shaped_url_are_left_out() -> None:
    good = file_entry("demo_pkg-1.0.tar.gz")
    off_site = file_entry("demo_pkg-1.0-py3-none-any.whl", url="https://evil.example/x.whl")
    other_name = file_entry("demo_pkg-1.1.tar.gz", url=good["url"])  # link text ≠ target
    no_size = file_entry("demo_pkg-1.2.tar.gz", size=None)
    rendered = render_project(
        document({"1.0": [good, off_site, "junk", {}], "1.1": [other_name], "1.2": [no_size]})
    )
    assert [f.filename for f in rendered.files] == ["demo_pkg-1.0.tar.gz"]
    assert b"evil.example" not in rendered.html + rendered.json
    assert len(parse_html(rendered.html).anchors) == 1


def test_optional_fields_and_their_defaults() -> None:
    entries = [
        file_entry("demo_pkg-1.0.tar.gz", digests={}, upload_time_iso_8601=None, upload_time=None),
        file_entry("demo_pkg-1.0-py3-none-any.whl", **{"core-metadata": True}),
        file_entry("demo_pkg-1.1.tar.gz", upload_time_iso_8601="2024-01-02T03:04:05Z"),
        file_entry("demo_pkg-1.2.tar.gz", upload_time_iso_8601="2024-01-02T03:04:05.5Z"),
        file_entry("demo_pkg-1.3.tar.gz", upload_time_iso_8601="yesterday"),
        file_entry("demo_pkg-1.4.tar.gz", yanked=True, yanked_reason=""),
    ]
    for entry in entries[2:]:
        entry.pop("core-metadata")  # ~2 % of PyPI's entries lack the key
    rendered = render_project(document({"1.0": entries}))
    files = {e["filename"]: e for e in orjson.loads(rendered.json)["files"]}
    anchors = {text: attrs for attrs, text in parse_html(rendered.html).anchors}

    no_hash = files["demo_pkg-1.0.tar.gz"]
    assert no_hash["hashes"] == {}
    assert no_hash["upload-time"] is None
    assert no_hash["requires-python"] is None
    assert anchors["demo_pkg-1.0.tar.gz"]["href"] == no_hash["url"]  # no fragment

    wheel = files["demo_pkg-1.0-py3-none-any.whl"]
    assert wheel["core-metadata"] is True
    assert anchors["demo_pkg-1.0-py3-none-any.whl"]["data-core-metadata"] == "true"
    assert anchors["demo_pkg-1.0-py3-none-any.whl"]["data-dist-info-metadata"] == "true"
    by_name = {f.filename: f for f in rendered.files}
    assert by_name["demo_pkg-1.0-py3-none-any.whl"].has_metadata
    assert by_name["demo_pkg-1.0-py3-none-any.whl"].metadata_sha256 is None
    assert not by_name["demo_pkg-1.1.tar.gz"].has_metadata

    assert files["demo_pkg-1.1.tar.gz"]["upload-time"] == "2024-01-02T03:04:05.000000Z"
    assert files["demo_pkg-1.2.tar.gz"]["upload-time"] == "2024-01-02T03:04:05.500000Z"
    assert files["demo_pkg-1.3.tar.gz"]["upload-time"] is None
    assert files["demo_pkg-1.4.tar.gz"]["yanked"] is True
    assert anchors["demo_pkg-1.4.tar.gz"]["data-yanked"] == ""
    assert all(files[e["filename"]]["core-metadata"] is False for e in entries[2:])


@given(requires_python=st.text(min_size=1, max_size=40), reason=st.text(min_size=1, max_size=40))
def test_attribute_values_round_trip_through_html_escaping(
    requires_python: str, reason: str
) -> None:
    entry = file_entry(
        "demo_pkg-1.0.tar.gz", requires_python=requires_python, yanked=True, yanked_reason=reason
    )
    rendered = render_project(document({"1.0": [entry]}))
    [(attrs, text)] = parse_html(rendered.html).anchors
    assert attrs["data-requires-python"] == requires_python
    assert attrs["data-yanked"] == reason
    assert text == "demo_pkg-1.0.tar.gz"
    [entry_json] = orjson.loads(rendered.json)["files"]
    assert entry_json["requires-python"] == requires_python
    assert entry_json["yanked"] == reason


def test_name_is_normalised_and_dict_or_bytes_render_the_same() -> None:
    doc = document({"1.0": [file_entry("demo_pkg-1.0.tar.gz")]}, name="Demo_.Pkg")
    from_dict = render_project(doc)
    from_bytes = render_project(orjson.dumps(doc))
    assert from_dict == from_bytes
    assert from_dict.name == "demo-pkg"
    assert from_dict.serial == 4242
    assert orjson.loads(from_dict.json)["name"] == "demo-pkg"
    assert b"<title>Links for demo-pkg</title>" in from_dict.html


def test_index_files_lists_every_file_of_every_release() -> None:
    doc = parse_pypi_json(pypi_body("requests"))
    files = index_files(doc)
    upstream = upstream_entries(doc)
    assert sorted(f.filename for f in files) == sorted(upstream) == [f.filename for f in files]
    for file in files:
        entry = upstream[file.filename]
        assert isinstance(file, IndexFile)
        assert file.sha256 == entry["digests"]["sha256"]
        assert file.size == entry["size"]
        assert file.path.endswith("/" + file.filename)
        assert file.path.startswith(entry["digests"]["blake2b_256"][:2] + "/")
        assert file.filename in {e["filename"] for e in doc["releases"][file.version]}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>not json</html>",
        b"[]",
        b'"text"',
        b"{}",
        b'{"info": {}, "releases": {}, "last_serial": 1}',
        b'{"info": {"name": "x"}, "last_serial": 1}',
        b'{"info": {"name": "x"}, "releases": [], "last_serial": 1}',
        b'{"info": {"name": "x"}, "releases": {}, "last_serial": "1"}',
        b'{"info": {"name": "x"}, "releases": {}, "last_serial": true}',
        b'{"info": {"name": "../etc"}, "releases": {}, "last_serial": 1}',
        b'{"info": {"name": "x"}, "releases": {}}',
    ],
)
def test_unusable_documents_raise_render_error(body: bytes) -> None:
    with pytest.raises(RenderError):
        render_project(body)
    with pytest.raises(ValueError):  # RenderError is a ValueError for callers that group them
        parse_pypi_json(body)


def test_unusable_dict_raises_render_error() -> None:
    with pytest.raises(RenderError, match="releases"):
        render_project({"info": {"name": "x"}, "last_serial": 1})


# -- root pages -------------------------------------------------------------------------------


def test_root_html() -> None:
    html = render_root_html(["a", "b-c", "zz9"])
    page = parse_html(html)
    assert html.startswith(b"<!DOCTYPE html>")
    assert page.meta["pypi:repository-version"] == "1.1"
    assert page.anchors == [
        ({"href": "a/"}, "a"),
        ({"href": "b-c/"}, "b-c"),
        ({"href": "zz9/"}, "zz9"),
    ]
    assert parse_html(render_root_html([])).anchors == []


def test_root_json() -> None:
    page = orjson.loads(render_root_json(iter([("a", 5), ("b-c", 7)]), 99))
    assert page == {
        "meta": {"api-version": "1.1", "_last-serial": 99},
        "projects": [{"name": "a", "_last-serial": 5}, {"name": "b-c", "_last-serial": 7}],
    }
    assert orjson.loads(render_root_json([], 0))["projects"] == []
