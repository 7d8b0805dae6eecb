"""A synthetic upstream PyPI on loopback, run in its own process (so it never competes with the
sync for an event loop): XML-RPC ``changelog_last_serial`` / ``list_packages_with_serial`` for
N projects, and ``/pypi/<name>/json`` bodies filled in from the size templates.

    python upstream.py --projects 1000000 --templates T.pickle --port P

Prints ``ready`` once listening. ``POST /_control?latency=0.05`` sets the delay of every JSON
answer; ``GET /_stats`` counts the JSON answers given.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import re
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sync_bench.names import display_name, project_index, serial_of, template_of

_METHOD = re.compile(rb"<methodName>\s*([A-Za-z_]+)\s*</methodName>")


def listing_xml(projects: int) -> bytes:
    """The answer of list_packages_with_serial, laid out as xmlrpc.client writes it."""
    parts = ["<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><struct>\n"]
    parts.extend(
        f"<member>\n<name>{display_name(i)}</name>\n<value><int>{serial_of(i)}</int></value>\n"
        "</member>\n"
        for i in range(projects)
    )
    parts.append("</struct></value>\n</param>\n</params>\n</methodResponse>\n")
    return "".join(parts).encode()


def int_answer(value: int) -> bytes:
    return (
        "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
        f"<value><int>{value}</int></value>\n</param>\n</params>\n</methodResponse>\n"
    ).encode()


class Upstream:
    def __init__(self, projects: int, templates: list[tuple[bytes, bytes, bytes]]) -> None:
        self.projects = projects
        self.templates = templates
        self.listing = listing_xml(projects)
        self.global_serial = serial_of(projects - 1) + 1
        self.latency = 0.0
        self.answers = 0

    async def xmlrpc(self, request: web.Request) -> web.Response:
        match = _METHOD.search(await request.read())
        method = match.group(1) if match else b""
        if method == b"list_packages_with_serial":
            body = self.listing
        elif method == b"changelog_last_serial":
            body = int_answer(self.global_serial)
        else:
            return web.Response(status=400)
        return web.Response(body=body, content_type="text/xml")

    async def project(self, request: web.Request) -> web.Response:
        index = project_index(request.match_info["name"])
        if index is None or index >= self.projects:
            raise web.HTTPNotFound()
        if self.latency:
            await asyncio.sleep(self.latency)
        head, middle, tail = self.templates[template_of(index, len(self.templates))]
        serial = serial_of(index)
        body = b"".join((head, display_name(index).encode(), middle, str(serial).encode(), tail))
        self.answers += 1
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"X-PyPI-Last-Serial": str(serial)},
        )

    async def control(self, request: web.Request) -> web.Response:
        self.latency = float(request.query.get("latency", self.latency))
        return web.Response(text="ok\n")

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"answers": self.answers})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--projects", type=int, required=True)
    parser.add_argument("--templates", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with open(args.templates, "rb") as handle:
        templates = pickle.load(handle)
    upstream = Upstream(args.projects, templates)
    app = web.Application()
    app.router.add_post("/pypi", upstream.xmlrpc)
    app.router.add_get("/pypi/{name}/json", upstream.project)
    app.router.add_post("/_control", upstream.control)
    app.router.add_get("/_stats", upstream.stats)

    async def ready(_app: web.Application) -> None:
        print("ready", flush=True)

    app.on_startup.append(ready)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
