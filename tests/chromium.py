"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol (a websocket,
with aiohttp's client: no other dependency).

``open_page(url)`` loads a page and reports what a person would have seen go wrong: console
errors, uncaught exceptions, failed loads, and every URL the page asked for. Where no
Chromium is installed the test is skipped with the reason (CI installs it: see the Makefile).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--window-size=1100,1600",
)


def chromium_or_skip() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium here (apt-get install -y chromium; `make test` installs it when root)")


@dataclass
class PageReport:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    requested: list[str] = field(default_factory=list)  # every URL the page loaded
    values: dict[str, Any] = field(default_factory=dict)  # the expressions asked for
    screenshot: bytes = b""


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, report: PageReport) -> None:
        self.ws = ws
        self.report = report
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.loaded = asyncio.Event()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = message.json()
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            self._event(data.get("method", ""), data.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        errors = self.report.errors
        if method == "Page.loadEventFired":
            self.loaded.set()
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                "console: " + " ".join(str(a.get("value", a)) for a in params.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            errors.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )
        elif method == "Network.requestWillBeSent":
            self.report.requested.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            errors.append(f"load failed: {params.get('errorText')}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[number] = future
        await self.ws.send_json({"id": number, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 20)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})


def _devtools_port(profile: Path, process: subprocess.Popen[bytes], timeout: float) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        if marker.exists():
            first = marker.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        time.sleep(0.05)
    raise RuntimeError("chromium did not open its DevTools port")


async def _drive(port: int, url: str, expressions: dict[str, str]) -> PageReport:
    report = PageReport()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as answer:
            targets = await answer.json()
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            session = _Session(ws, report)
            for domain in ("Page", "Runtime", "Log", "Network"):
                await session.call(f"{domain}.enable")
            await session.call("Page.navigate", url=url)
            await asyncio.wait_for(session.loaded.wait(), 20)
            await asyncio.sleep(0.3)  # late console messages
            for name, expression in expressions.items():
                result = await session.call(
                    "Runtime.evaluate", expression=expression, returnByValue=True
                )
                report.values[name] = result.get("result", {}).get("value")
            shot = await session.call(
                "Page.captureScreenshot", format="png", captureBeyondViewport=True
            )
            report.screenshot = base64.b64decode(shot["data"])
            session.reader.cancel()
    return report


def open_page(url: str, expressions: dict[str, str], timeout: float = 30.0) -> PageReport:
    """Load ``url`` in a new headless Chromium (fresh profile) and evaluate ``expressions``
    (JavaScript, values returned by value) once it has loaded."""
    binary = chromium_or_skip()
    # Chromium's helper processes (renderer, zygote, crash handler) may outlive the browser
    # for a moment and still write to the profile: they share the browser's process group,
    # which is stopped as a whole, and a file they leave behind cannot fail the test.
    with tempfile.TemporaryDirectory(
        prefix="chromium-profile-", ignore_cleanup_errors=True
    ) as profile:
        process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port = _devtools_port(Path(profile), process, timeout)
            return asyncio.run(asyncio.wait_for(_drive(port, url, expressions), timeout))
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(10)
            break
        except subprocess.TimeoutExpired:
            continue
    time.sleep(0.2)  # the group's other members leave with the browser
