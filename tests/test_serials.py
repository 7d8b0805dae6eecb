"""Where serials come from: XML-RPC list_packages_with_serial and the PEP 691 root index."""

from __future__ import annotations

import xmlrpc.client
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from pypi_mirror.config import Config, config_from_dict
from pypi_mirror.index.serials import (
    fetch_serials,
    parse_serials_json,
    parse_serials_xml,
)
from pypi_mirror.upstream import UpstreamError, UpstreamUrls, make_session
from tests.fakepypi import FakePyPI


def xml_answer(result: object) -> bytes:
    return xmlrpc.client.dumps((result,), methodresponse=True).encode()


def test_xml_names_are_normalised_and_the_highest_serial_wins() -> None:
    body = xml_answer({"Foo_Bar": 5, "foo-bar": 7, "FOO.BAR": 3, "Django": 11, "six": 2})
    projects, invalid = parse_serials_xml(body)
    assert projects == {"foo-bar": 7, "django": 11, "six": 2}
    assert invalid == 0


def test_xml_parses_the_same_in_any_chunking() -> None:
    listing = {f"Project_{i}.x": 1000 + i for i in range(300)}
    body = xml_answer(listing)
    whole, _ = parse_serials_xml(body)
    chunked, _ = parse_serials_xml([body[i : i + 7] for i in range(0, len(body), 7)])
    assert whole == chunked
    assert whole == {f"project-{i}-x": 1000 + i for i in range(300)}


def test_xml_skips_names_that_are_not_project_names() -> None:
    projects, invalid = parse_serials_xml(xml_answer({"../../etc": 1, "-bad": 2, "good": 3}))
    assert projects == {"good": 3}
    assert invalid == 2


def test_xml_fault_is_an_upstream_error() -> None:
    body = xmlrpc.client.dumps(xmlrpc.client.Fault(-32500, "rate limited"), methodresponse=True)
    with pytest.raises(UpstreamError, match="rate limited"):
        parse_serials_xml(body.encode())


def test_xml_serial_that_is_not_an_integer_is_an_error() -> None:
    with pytest.raises(UpstreamError, match="not a serial"):
        parse_serials_xml(xml_answer({"six": "lots"}))


def test_json_walk_reads_entries_and_meta_serial() -> None:
    doc = {
        "meta": {"api-version": "1.1", "_last-serial": "99"},
        "projects": [
            {"name": "Foo_Bar", "_last-serial": 5},
            {"name": "foo.bar", "_last-serial": 8},
            {"name": "six", "_last-serial": 2},
        ],
    }
    serials = parse_serials_json(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    assert serials.projects == {"foo-bar": 8, "six": 2}
    assert serials.global_serial == 99
    # Projects before meta, compact form: the same answer.
    compact = b'{"projects":[{"name":"six","_last-serial":2}],"meta":{"_last-serial":4}}'
    assert parse_serials_json(compact).projects == {"six": 2}
    assert parse_serials_json(compact).global_serial == 4
    empty = parse_serials_json(b'{"meta": {"_last-serial": 1}, "projects": [ ]}')
    assert empty.projects == {}


@pytest.mark.parametrize(
    "body",
    [
        b'{"projects":[{"name":"six"}]}',  # no _last-serial: this upstream cannot be synced from
        b'{"projects":[{"name":"six","_last-serial":1} {"name":"a","_last-serial":1}]}',
        b'{"projects":[{"name":"six","_last-serial":1}]} trailing',
        b'{"meta":{}}',
        b'{"projects":[{"name":"six","_last-serial":1}',
        b"\xff\xfe",
        b"[]",
    ],
)
def test_json_walk_rejects_malformed_indexes(body: bytes) -> None:
    with pytest.raises(UpstreamError):
        parse_serials_json(body)


def make_config(tmp_path: Path, url: str, source: str = "xmlrpc") -> Config:
    return config_from_dict(
        {
            "repo_path": str(tmp_path),
            "upstream": {"pypi_url": url, "packages_url": url, "serials_source": source},
        }
    )


@pytest.mark.parametrize("source", ["xmlrpc", "simple-json"])
async def test_both_sources_agree_with_the_upstream(
    tmp_path: Path, fake_pypi: FakePyPI, source: str
) -> None:
    fake_pypi.add_wheel("Foo_Bar", "1.0")
    fake_pypi.add_wheel("six", "1.16.0")
    fake_pypi.add_sdist("six", "1.17.0")
    config = make_config(tmp_path, fake_pypi.url, source)
    async with make_session(config) as session:
        serials = await fetch_serials(session, UpstreamUrls(config), source)
    assert serials.projects == {
        "foo-bar": fake_pypi.project_serial("foo-bar"),
        "six": fake_pypi.project_serial("six"),
    }
    assert serials.global_serial == fake_pypi.serial
    if source == "xmlrpc":
        calls = fake_pypi.requests_matching("/pypi", "POST")
        assert len(calls) == 2
    else:
        (call,) = fake_pypi.requests_matching("/simple/")
        assert call.headers["Accept"] == "application/vnd.pypi.simple.v1+json"


HOSTILE_XML = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<methodResponse><params><param><value><struct>
<member><name>&lol2;</name><value><int>1</int></value></member>
</struct></value></param></params></methodResponse>"""


async def hostile_upstream(aiohttp_server: object, body: bytes, status: int = 200) -> str:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, status=status, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/pypi", answer)
    server = await aiohttp_server(app)  # type: ignore[operator]
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (HOSTILE_XML, 200, "unsafe or malformed XML"),
        (b"<methodResponse><params><param>", 200, "unsafe or malformed XML"),
        (b"not xml at all", 200, "unsafe or malformed XML"),
        (b"busy", 503, "HTTP 503"),
    ],
)
async def test_bad_xml_answers_are_refused(
    tmp_path: Path, aiohttp_server: object, body: bytes, status: int, message: str
) -> None:
    url = await hostile_upstream(aiohttp_server, body, status)
    config = make_config(tmp_path, url)
    async with make_session(config) as session:
        with pytest.raises(UpstreamError, match=message):
            await fetch_serials(session, UpstreamUrls(config), "xmlrpc")


async def test_unreachable_upstream_is_an_upstream_error(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9")
    async with make_session(config) as session:
        with pytest.raises(UpstreamError, match="cannot list projects"):
            await fetch_serials(session, UpstreamUrls(config), "xmlrpc")


def test_a_long_listing_reports_its_progress() -> None:
    count = 40_000
    doc = {"projects": [{"name": f"p{i}", "_last-serial": i} for i in range(count)]}
    told: list[int] = []
    serials = parse_serials_json(orjson.dumps(doc), told.append)
    assert told == [16_384, 16_384]  # every 16,384 entries; the rest is in `entries`
    assert serials.entries == count
    assert len(serials.projects) == count
