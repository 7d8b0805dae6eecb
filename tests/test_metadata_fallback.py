"""PEP 658 ``.metadata`` through the mirror when the upstream file host has none (end to end).

Live PyPI advertises core metadata for files whose ``<file>.metadata`` its file host answers
404; pip then fails. The mirror must answer those requests itself: from the upstream when it
has the file, else from the wheel's METADATA read with Range requests and checked against the
advertised hash.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from pypi_mirror.server import metadata as metadata_module
from pypi_mirror.server.metadata import MetadataUnavailable, RangeFile, extract_wheel_metadata
from tests.fakepypi import FakeFile, FakePyPI, RequestRecord
from tests.mirror import Mirror, Reply, client_env, free_port, http
from tests.wheelbuilder import build_wheel, core_metadata, padding_bytes

METADATA_TYPE = "text/plain; charset=utf-8"


def metadata_url(mirror: Mirror, dist: FakeFile) -> str:
    return f"{mirror.base}/packages/{dist.path}.metadata"


def tier_copy(mirror: Mirror, dist: FakeFile) -> Path:
    return mirror.repo / "packages" / f"{dist.path}.metadata"


def load_page(mirror: Mirror, project: str) -> str:
    """Fetch the project page (the mirror fetches the index on demand) and return it."""
    page = http(f"{mirror.simple}{project}/")
    assert page.status == 200, page.body
    return page.body.decode()


def wheel_requests(fake: FakePyPI, dist: FakeFile) -> list[RequestRecord]:
    return [r for r in fake.requests_matching(dist.filename) if r.path.endswith(".whl")]


def bytes_asked(record: RequestRecord, size: int) -> int:
    """How many bytes a Range request asked for (the whole file without a Range)."""
    spec = record.headers.get("Range", "").removeprefix("bytes=")
    if not spec:
        return size
    first, _, last = spec.partition("-")
    if not first:
        return min(int(last), size)
    return min(int(last) if last else size - 1, size - 1) - int(first) + 1


def get(url: str, method: str = "GET") -> Reply:
    return http(url, method=method)


def test_metadata_is_passed_on_when_the_upstream_has_it(
    fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    dist = fake_pypi.add_wheel("alpha", "1.0", dependencies=["beta>=2"])
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url) as mirror:
        page = load_page(mirror, "alpha")
        assert f'data-core-metadata="sha256={dist.metadata_sha256}"' in page
        reply = get(metadata_url(mirror, dist))
        assert reply.status == 200  # not a 302, though 302 is the fallback mode
        assert reply.body == dist.metadata
        assert reply.headers["content-type"] == METADATA_TYPE
        head = get(metadata_url(mirror, dist), method="HEAD")
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == str(len(dist.metadata or b""))
        assert fake_pypi.requests_matching(f"{dist.filename}.metadata")
        assert wheel_requests(fake_pypi, dist) == []


def test_metadata_is_read_from_the_wheel_with_ranges_when_the_upstream_404s(
    fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.fail(".metadata", status=404, times=None)
    dist = fake_pypi.add_wheel("alpha", "1.0", dependencies=["beta>=2"], extra_bytes=400_000)
    assert dist.metadata is not None
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url) as mirror:
        load_page(mirror, "alpha")
        assert get(f"{fake_pypi.files_url}/packages/{dist.path}.metadata").status == 404
        fake_pypi.clear_requests()

        reply = get(metadata_url(mirror, dist))
        assert reply.status == 200, reply.body
        assert reply.body == dist.metadata
        assert hashlib.sha256(reply.body).hexdigest() == dist.metadata_sha256
        assert reply.headers["content-type"] == METADATA_TYPE

        asked = wheel_requests(fake_pypi, dist)
        assert asked, "the wheel was never read"
        assert all("Range" in r.headers for r in asked), "a full GET of the wheel"
        assert sum(bytes_asked(r, dist.size) for r in asked) < dist.size // 2
        assert tier_copy(mirror, dist).read_bytes() == dist.metadata

        fake_pypi.clear_requests()
        again = get(metadata_url(mirror, dist))
        head = get(metadata_url(mirror, dist), method="HEAD")
        assert again.status == 200 and again.body == dist.metadata
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == str(len(dist.metadata))
        assert fake_pypi.requests_matching(dist.filename) == []  # local hits now


def build_wheel_metadata_first(name: str, version: str) -> tuple[str, bytes, bytes]:
    """A valid wheel whose METADATA sits at the front, far from the zip's tail, behind many
    members: the reader needs the tail, then the central directory, then the member."""
    metadata = core_metadata(name, version)
    dist_info = f"{name}-{version}.dist-info"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{dist_info}/METADATA", metadata, zipfile.ZIP_DEFLATED)
        archive.writestr(f"{name}/blob.bin", padding_bytes(name, version, 300_000))
        for i in range(1500):  # a central directory larger than the first tail read
            archive.writestr(f"{name}/module_with_a_long_name_{i:05d}.py", f"X = {i}\n")
        archive.writestr(
            f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{dist_info}/RECORD", b"")
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue(), metadata


def test_metadata_far_from_the_tail_takes_a_few_ranges_not_the_wheel(
    fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.fail(".metadata", status=404, times=None)
    filename, content, metadata = build_wheel_metadata_first("gamma", "3.0")
    dist = fake_pypi.add_file("gamma", "3.0", filename, content, metadata=metadata)
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url) as mirror:
        load_page(mirror, "gamma")
        fake_pypi.clear_requests()
        reply = get(metadata_url(mirror, dist))
        assert reply.status == 200, reply.body
        assert reply.body == metadata
        asked = wheel_requests(fake_pypi, dist)
        assert len(asked) >= 3  # tail, central directory, member
        assert all("Range" in r.headers for r in asked)
        assert sum(bytes_asked(r, dist.size) for r in asked) < dist.size // 2


def test_metadata_that_does_not_match_the_advertised_hash_is_never_served(
    fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    fake_pypi.fail(".metadata", status=404, times=None)
    filename, content, _real = build_wheel("delta", "1.0")
    # The index advertises the hash of other bytes than the wheel's METADATA.
    dist = fake_pypi.add_file(
        "delta", "1.0", filename, content, metadata=core_metadata("delta", "1.0.post1")
    )
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url) as mirror:
        load_page(mirror, "delta")
        reply = get(metadata_url(mirror, dist))
        assert reply.status == 404
        assert wheel_requests(fake_pypi, dist), "the wheel was never looked at"
        assert not tier_copy(mirror, dist).exists()
        assert get(metadata_url(mirror, dist), method="HEAD").status == 404


def test_no_advertised_hash_means_404_without_touching_the_wheel(
    fake_pypi: FakePyPI, tmp_path: Path
) -> None:
    dist = fake_pypi.add_wheel("epsilon", "1.0", metadata=False)
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url) as mirror:
        assert "data-core-metadata" not in load_page(mirror, "epsilon")
        reply = get(metadata_url(mirror, dist))
        assert reply.status == 404
        assert wheel_requests(fake_pypi, dist) == []
        assert not tier_copy(mirror, dist).exists()


def test_concurrent_requests_share_one_extraction(fake_pypi: FakePyPI, tmp_path: Path) -> None:
    fake_pypi.fail(".metadata", status=404, times=None)
    dist = fake_pypi.add_wheel("zeta", "1.0", extra_bytes=100_000)
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url) as mirror:
        load_page(mirror, "zeta")
        fake_pypi.clear_requests()
        fake_pypi.delay(dist.filename, 0.5)  # holds the first fetch while the others arrive
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _i: get(metadata_url(mirror, dist)), range(8)))
        assert [r.status for r in replies] == [200] * 8
        assert all(r.body == dist.metadata for r in replies)
        assert len(fake_pypi.requests_matching(f"{dist.filename}.metadata")) == 1


def test_unreachable_upstream_is_502(fake_pypi: FakePyPI, tmp_path: Path) -> None:
    dist = fake_pypi.add_wheel("eta", "1.0")
    dead = f"http://127.0.0.1:{free_port()}/files"
    with Mirror(tmp_path, fake_pypi.url, dead) as mirror:
        assert get(metadata_url(mirror, dist)).status == 502


def test_slow_upstream_is_504(fake_pypi: FakePyPI, tmp_path: Path) -> None:
    dist = fake_pypi.add_wheel("theta", "1.0")
    fake_pypi.delay(".metadata", 3.0)
    with Mirror(
        tmp_path, fake_pypi.url, fake_pypi.files_url, timeouts={"upstream": "1s"}
    ) as mirror:
        assert get(metadata_url(mirror, dist)).status == 504


@pytest.mark.parametrize("mode", ["302", "proxy"])
def test_pip_installs_when_upstream_metadata_404s(
    fake_pypi: FakePyPI, tmp_path: Path, mode: str
) -> None:
    fake_pypi.fail(".metadata", status=404, times=None)
    alpha = fake_pypi.add_wheel("alpha", "1.0", dependencies=["beta>=2"])
    beta = fake_pypi.add_wheel("beta", "2.1")
    target = tmp_path / "target"
    with Mirror(tmp_path, fake_pypi.url, fake_pypi.files_url, fallback={"default": mode}) as mirror:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--index-url",
                mirror.simple,
                "--target",
                str(target),
                "alpha",
            ],
            env=client_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr + mirror.stderr()
        assert (target / "alpha" / "__init__.py").is_file()
        assert (target / "beta" / "__init__.py").is_file()
        # pip read both metadata files through the mirror, which built them from the wheels.
        assert tier_copy(mirror, alpha).read_bytes() == alpha.metadata
        assert tier_copy(mirror, beta).read_bytes() == beta.metadata
        assert fake_pypi.requests_matching(f"{alpha.filename}.metadata")


def test_range_file_reads_only_what_it_holds() -> None:
    remote = RangeFile(100)
    remote.add(10, bytes(range(10, 20)))
    remote.add(30, bytes(range(30, 40)))
    remote.add(15, bytes(range(15, 35)))  # bridges both parts
    assert remote.covers(10, 40) and not remote.covers(9, 12) and not remote.covers(39, 41)
    remote.seek(12)
    assert remote.read(25) == bytes(range(12, 37))
    assert remote.fetched() == 30
    remote.seek(-5, 2)
    with pytest.raises(metadata_module._Missing) as missing:
        remote.read()
    assert (missing.value.start, missing.value.end) == (95, 100)


async def test_upstream_that_ignores_range_is_502_not_a_full_download(
    aiohttp_server: object,
) -> None:
    filename, content, _metadata = build_wheel("iota", "1.0", extra_bytes=200_000)

    async def whole_file(request: web.Request) -> web.Response:
        return web.Response(body=content)  # Range ignored: 200 with everything

    app = web.Application()
    app.router.add_get("/{tail:.*}", whole_file)
    server = await aiohttp_server(app)  # type: ignore[operator]
    async with ClientSession() as session:
        with pytest.raises(MetadataUnavailable) as caught:
            await extract_wheel_metadata(session, str(server.make_url(f"/{filename}")), filename)
    assert caught.value.status == 502
