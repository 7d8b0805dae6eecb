"""`pypi-mirror cache purge` and `cache prewarm`, through the real CLI against the fake upstream:
two tiers, the index held by a real `sync`, files served by a real `serve`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pypi_mirror.db import Database, LocalFile
from tests.fakepypi import FakeFile, FakePyPI, file_path
from tests.mirror import Mirror, client_env, http
from tests.wheelbuilder import build_wheel


def make_mirror(tmp_path: Path, fake: FakePyPI, hot_limit: str = "1g") -> Mirror:
    hot, cold = tmp_path / "hot", tmp_path / "cold"
    hot.mkdir()
    cold.mkdir()
    return Mirror(
        tmp_path,
        fake.url,
        fake.files_url,
        cache={"tiers": [{"path": str(hot), "size_limit": hot_limit},
                         {"path": str(cold), "size_limit": "1g"}]},
        sync={"retry": 0},
    )  # fmt: skip


def cli(mirror: Mirror, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypi_mirror", *args, "-c", str(mirror.config_path)],
        capture_output=True, text=True, timeout=timeout, cwd=mirror.tmp,
    )  # fmt: skip


def sync(mirror: Mirror) -> None:
    done = cli(mirror, "sync")
    assert done.returncode == 0, done.stdout + done.stderr


def tier(mirror: Mirror, index: int) -> Path:
    return Path(mirror.config["cache"]["tiers"][index]["path"])


def place(mirror: Mirror, index: int, path: str, content: bytes) -> None:
    """A cached file, as the cache manager leaves one: on disk and in local_sizes."""
    target = tier(mirror, index) / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    db = Database.in_repo(mirror.repo)
    try:
        db.set_local_files([LocalFile(path, len(content), index)])
    finally:
        db.close()


def local_rows(mirror: Mirror) -> dict[str, tuple[int, int]]:
    with sqlite3.connect(mirror.repo / "pypi-mirror.db") as conn:
        return {
            path: (size, tier)
            for path, size, tier in conn.execute(
                "SELECT f.path, l.size, l.tier FROM local_sizes l JOIN files f ON f.id = l.file_id"
            )
        }


def on_disk(mirror: Mirror) -> dict[str, int]:
    """Every regular file of both tiers: path -> tier."""
    found = {}
    for index in (0, 1):
        base = tier(mirror, index)
        for full in base.rglob("*"):
            if full.is_file():
                found[str(full.relative_to(base))] = index
    return found


def serial_of(mirror: Mirror, name: str) -> int | None:
    with sqlite3.connect(mirror.repo / "pypi-mirror.db") as conn:
        row = conn.execute("SELECT serial FROM serials WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


# -- purge -----------------------------------------------------------------------------------


@pytest.fixture
def purge_world(tmp_path: Path, fake_pypi: FakePyPI) -> tuple[Mirror, dict[str, FakeFile]]:
    files = {
        "w1": fake_pypi.add_wheel("evil-pkg", "1.0"),
        "s1": fake_pypi.add_sdist("evil-pkg", "1.0"),
        "w2": fake_pypi.add_wheel("evil-pkg", "2.0"),
        "other": fake_pypi.add_wheel("evil-pkg-tools", "1.0"),
    }
    mirror = make_mirror(tmp_path, fake_pypi)
    sync(mirror)
    place(mirror, 0, files["w1"].path, files["w1"].content)
    assert files["w1"].metadata is not None
    place(mirror, 0, files["w1"].path + ".metadata", files["w1"].metadata)
    place(mirror, 1, files["s1"].path, files["s1"].content)
    place(mirror, 1, files["w2"].path, files["w2"].content)
    place(mirror, 0, files["other"].path, files["other"].content)
    # A file the index no longer lists (removed upstream): the tier walk still finds it.
    filename, content, _metadata = build_wheel("Evil.Pkg", "0.9")
    unlisted = file_path(content, filename)
    place(mirror, 1, unlisted, content)
    files["unlisted"] = replace(files["w1"], path=unlisted, filename=filename, content=content)
    return mirror, files


def test_purge_removes_from_every_tier_the_database_and_the_pages(
    purge_world: tuple[Mirror, dict[str, FakeFile]],
) -> None:
    mirror, files = purge_world
    assert (mirror.repo / "simple" / "evil-pkg" / "index.html").is_file()
    dry = cli(mirror, "cache", "purge", "Evil_Pkg", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove 5 file(s)" in dry.stdout
    assert len(on_disk(mirror)) == 6 and serial_of(mirror, "evil-pkg") is not None

    done = cli(mirror, "cache", "purge", "Evil_Pkg")
    assert done.returncode == 0, done.stdout + done.stderr
    assert on_disk(mirror) == {files["other"].path: 0}
    assert set(local_rows(mirror)) == {files["other"].path}
    for key, index in (("w1", 0), ("s1", 1), ("w2", 1), ("unlisted", 1)):
        assert f"removed {files[key].path} (tier {index}, {len(files[key].content):,} bytes)" in (
            done.stdout
        )
    assert "removed 5 file(s)" in done.stdout and "pages" in done.stdout
    # The pages go, and the serial: the next sync (or request) fetches the project again.
    assert not (mirror.repo / "simple" / "evil-pkg").exists()
    assert not (mirror.repo / "json" / "evil-pkg").exists()
    assert serial_of(mirror, "evil-pkg") is None
    assert (mirror.repo / "simple" / "evil-pkg-tools" / "index.html").is_file()
    sync(mirror)
    assert (mirror.repo / "simple" / "evil-pkg" / "index.html").is_file()


def test_purge_version_and_file_narrow_it(
    purge_world: tuple[Mirror, dict[str, FakeFile]],
) -> None:
    mirror, files = purge_world
    done = cli(mirror, "cache", "purge", "evil-pkg", "--version", "1.0")
    assert done.returncode == 0, done.stdout + done.stderr
    left = on_disk(mirror)
    assert files["w1"].path not in left and files["w1"].path + ".metadata" not in left
    assert files["s1"].path not in left
    assert {files["w2"].path, files["unlisted"].path, files["other"].path} <= set(left)

    done = cli(mirror, "cache", "purge", "evil-pkg", "--file", files["w2"].filename)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(on_disk(mirror)) == {files["unlisted"].path, files["other"].path}
    assert set(local_rows(mirror)) == {files["unlisted"].path, files["other"].path}

    nothing = cli(mirror, "cache", "purge", "evil-pkg", "--version", "7.0")
    assert nothing.returncode == 0 and "removed 0 file(s)" in nothing.stdout


def test_purge_rejects_a_bad_name(purge_world: tuple[Mirror, dict[str, FakeFile]]) -> None:
    mirror, _files = purge_world
    done = cli(mirror, "cache", "purge", "../evil")
    assert done.returncode == 2 and "not a project name" in done.stderr
    done = cli(mirror, "cache", "purge", "evil-pkg", "--file", "a/b.whl")
    assert done.returncode == 2


def test_a_running_serve_stops_serving_a_purged_file_at_once(
    purge_world: tuple[Mirror, dict[str, FakeFile]],
) -> None:
    mirror, files = purge_world
    url = f"{mirror.base}/packages/{files['w2'].path}"
    with mirror:
        first = http(url)
        assert first.status == 200 and first.body == files["w2"].content
        done = cli(mirror, "cache", "purge", "evil-pkg", "--file", files["w2"].filename)
        assert done.returncode == 0, done.stdout + done.stderr
        after = http(url)
        assert after.status == 302  # the upstream fallback: no longer a local file
        page = http(f"{mirror.base}/simple/evil-pkg/")
        assert page.status == 200  # fetched again on demand
        assert files["w2"].filename.encode() in page.body


# -- prewarm ---------------------------------------------------------------------------------


@pytest.fixture
def app_upstream(fake_pypi: FakePyPI) -> FakePyPI:
    fake_pypi.add_wheel("base-lib", "1.0")
    fake_pypi.add_wheel("top-app", "0.5", dependencies=["base-lib>=1.0"])
    fake_pypi.add_sdist("top-app", "0.5")
    fake_pypi.add_wheel("unrelated", "3.0")
    return fake_pypi


def write_requirements(folder: Path, base: FakeFile, top: list[FakeFile]) -> Path:
    (folder / "base.txt").write_text(
        f"# pinned by hand\nbase-lib==1.0 --hash=sha256:{base.sha256}\n"
    )
    hashes = " \\\n    ".join(f"--hash=sha256:{f.sha256}" for f in top)
    main = folder / "requirements.txt"
    main.write_text(
        f"--index-url https://example.invalid/simple\n-r base.txt\n"
        f"Top_App==0.5 \\\n    {hashes}  # the app\n"
    )
    return main


def write_uv_lock(folder: Path, base: FakeFile, top: list[FakeFile]) -> Path:
    wheels = [f for f in top if f.filename.endswith(".whl")]
    sdist = next(f for f in top if not f.filename.endswith(".whl"))
    lock = folder / "uv.lock"
    lock.write_text(
        'version = 1\nrequires-python = ">=3.8"\n\n'
        '[[package]]\nname = "base-lib"\nversion = "1.0"\n'
        'source = { registry = "https://pypi.org/simple" }\n'
        f'wheels = [\n    {{ url = "{base.url}", hash = "sha256:{base.sha256}", '
        f"size = {base.size} }},\n]\n\n"
        '[[package]]\nname = "top-app"\nversion = "0.5"\n'
        'source = { registry = "https://pypi.org/simple" }\n'
        'dependencies = [{ name = "base-lib" }]\n'
        f'sdist = {{ url = "{sdist.url}", hash = "sha256:{sdist.sha256}" }}\n'
        + "wheels = [\n"
        + "".join(f'    {{ url = "{f.url}", hash = "sha256:{f.sha256}" }},\n' for f in wheels)
        + "]\n\n"
        '[[package]]\nname = "my-app"\nversion = "0.1.0"\nsource = { editable = "." }\n'
    )
    return lock


def write_pylock(folder: Path, base: FakeFile, top: list[FakeFile]) -> Path:
    # URLs of another mirror's /packages/... map to the same file paths.
    def url(f: FakeFile) -> str:
        return f"https://mirror.example/pypi/packages/{f.path}"

    lock = folder / "pylock.toml"
    parts = ['lock-version = "1.0"\ncreated-by = "tests"\n']
    for name, version, files in (("base-lib", "1.0", [base]), ("top-app", "0.5", top)):
        parts.append(f'\n[[packages]]\nname = "{name}"\nversion = "{version}"\n')
        for f in files:
            if f.filename.endswith(".whl"):
                parts.append(
                    f'[[packages.wheels]]\nurl = "{url(f)}"\nhashes = {{ sha256 = "{f.sha256}" }}\n'
                )
    parts.append(
        '\n[[packages]]\nname = "local-thing"\n'
        '[packages.archive]\nurl = "https://example.invalid/x.tar.gz"\n'
        'hashes = { sha256 = "' + "0" * 64 + '" }\n'
    )
    lock.write_text("".join(parts))
    return lock


WRITERS = {"requirements": write_requirements, "uv.lock": write_uv_lock, "pylock": write_pylock}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_prewarm_downloads_verified_files_that_then_install_without_the_upstream(
    tmp_path: Path, app_upstream: FakePyPI, kind: str
) -> None:
    mirror = make_mirror(tmp_path, app_upstream)
    sync(mirror)
    base = app_upstream.file("base-lib", "base_lib-1.0-py3-none-any.whl")
    top = app_upstream.files("top-app")
    lock = WRITERS[kind](tmp_path, base, top)
    done = cli(mirror, "cache", "prewarm", str(lock))
    assert done.returncode == 0, done.stdout + done.stderr
    wanted = [base, *(top if kind != "pylock" else [f for f in top if f.path.endswith(".whl")])]
    placed = on_disk(mirror)
    for f in wanted:
        assert placed.get(f.path) == 0, f"{f.filename} not in the hot tier"
        assert (tier(mirror, 0) / f.path).read_bytes() == f.content
        assert local_rows(mirror)[f.path] == (f.size, 0)
        if f.metadata is not None:  # installers ask for it first (PEP 658)
            assert (tier(mirror, 0) / (f.path + ".metadata")).read_bytes() == f.metadata
    assert not any("unrelated" in path for path in placed)
    count = len(wanted) + sum(f.metadata is not None for f in wanted)  # with .metadata files
    assert f"{count} downloaded" in done.stdout and "0 failed" in done.stdout
    if kind == "pylock":
        assert "skipped pylock.toml: local-thing: archive source, not an index file" in done.stdout

    again = cli(mirror, "cache", "prewarm", str(lock))
    assert again.returncode == 0 and f"{len(wanted)} already cached" in again.stdout

    with mirror:
        app_upstream.stop()  # nothing may come from the upstream now
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir",
             "--index-url", mirror.simple, "--target", str(tmp_path / "site"), "top-app"],
            check=True, env=client_env(), timeout=180,
        )  # fmt: skip
    assert {p.name for p in (tmp_path / "site").glob("*.dist-info")} == {
        "top_app-0.5.dist-info",
        "base_lib-1.0.dist-info",
    }


def test_prewarm_names_files_with_a_wrong_hash_and_places_nothing_for_them(
    tmp_path: Path, app_upstream: FakePyPI
) -> None:
    mirror = make_mirror(tmp_path, app_upstream)
    sync(mirror)
    base = app_upstream.file("base-lib", "base_lib-1.0-py3-none-any.whl")
    wheel = app_upstream.file("top-app", "top_app-0.5-py3-none-any.whl")
    bad = "ab" * 32
    (tmp_path / "uv.lock").write_text(
        f'version = 1\n[[package]]\nname = "top-app"\nversion = "0.5"\n'
        f'wheels = [{{ url = "{wheel.url}", hash = "sha256:{bad}" }},\n'
        f'  {{ url = "https://example.invalid/x-1.0-py3-none-any.whl", hash = "sha256:{bad}" }}]\n'
    )
    (tmp_path / "requirements.txt").write_text(
        f"base-lib==1.0 --hash=sha256:{bad}\nunrelated==3.0\n"
    )
    done = cli(mirror, "cache", "prewarm", "uv.lock", "requirements.txt")
    assert done.returncode == 1
    assert f"failed uv.lock: top-app 0.5: {wheel.filename}" in done.stderr
    assert f"failed requirements.txt:1: base-lib: no file with sha256 {bad}" in done.stderr
    assert "skipped uv.lock: top-app 0.5: https://example.invalid/" in done.stdout
    assert "unrelated has no --hash" in done.stdout
    assert on_disk(mirror) == {} and local_rows(mirror) == {}
    assert base.path not in done.stdout


def test_prewarm_fills_the_hottest_tier_with_room(tmp_path: Path, app_upstream: FakePyPI) -> None:
    mirror = make_mirror(tmp_path, app_upstream, hot_limit="1")  # one byte: nothing fits
    base = app_upstream.file("base-lib", "base_lib-1.0-py3-none-any.whl")
    # Not synced: the project's files come from the upstream's JSON API.
    (tmp_path / "requirements.txt").write_text(f"base-lib==1.0 --hash=sha256:{base.sha256}\n")
    done = cli(mirror, "cache", "prewarm", "requirements.txt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert on_disk(mirror)[base.path] == 1
    assert local_rows(mirror)[base.path] == (base.size, 1)


# -- the file formats (no upstream) ----------------------------------------------------------


def test_requirements_parsing(tmp_path: Path) -> None:
    from pypi_mirror.cache.lockfiles import parse_file

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.txt").write_text(
        f"-r ../requirements.lock\nzeta==2 --hash sha256:{c}\n"
    )
    (tmp_path / "requirements.lock").write_text(
        "# generated\n"
        "-e .\n"
        "--requirement=sub/more.txt\n"
        f'Foo.Bar[x]==1.0 ; python_version < "3.99" \\\n'
        f"    --hash=sha256:{a} \\\n"
        f"    --hash=sha256:{b}  # why\n"
        "loose>=1\n"
        "https://example.invalid/x.whl#sha256=abc\n"
    )
    parsed = parse_file(tmp_path / "requirements.lock")
    assert [(w.name, w.version, w.sha256, w.origin) for w in parsed.wanted] == [
        ("zeta", "2", c, "more.txt:2"),
        ("foo-bar", "1.0", a, "requirements.lock:4"),
        ("foo-bar", "1.0", b, "requirements.lock:4"),
    ]
    assert len(parsed.skipped) == 2
    assert "loose is not pinned" in parsed.skipped[0]


def test_both_commands_wait_for_a_sync_managing_the_cache_then_give_up(
    purge_world: tuple[Mirror, dict[str, FakeFile]],
) -> None:
    import fcntl

    mirror, _files = purge_world
    before = on_disk(mirror)
    with open(mirror.repo / ".cache.lock", "a") as handle:  # what sync's cache phase holds
        fcntl.flock(handle, fcntl.LOCK_EX)
        purge = cli(mirror, "cache", "purge", "evil-pkg", "--wait", "0.5")
        (mirror.tmp / "r.txt").write_text("")
        prewarm = cli(mirror, "cache", "prewarm", "r.txt", "--wait", "0")
    for done in (purge, prewarm):
        assert done.returncode == 1
        assert "a sync is managing the cache" in done.stderr
    assert on_disk(mirror) == before


def test_prewarm_refuses_files_over_the_filesize_limit(
    tmp_path: Path, app_upstream: FakePyPI
) -> None:
    import yaml

    mirror = make_mirror(tmp_path, app_upstream)
    mirror.config["cache"]["filesize_limit"] = "100"  # the cache manager would evict them
    mirror.config_path.write_text(yaml.safe_dump(mirror.config))
    base = app_upstream.file("base-lib", "base_lib-1.0-py3-none-any.whl")
    (tmp_path / "requirements.txt").write_text(f"base-lib==1.0 --hash=sha256:{base.sha256}\n")
    done = cli(mirror, "cache", "prewarm", "requirements.txt")
    assert done.returncode == 1
    assert f"{base.filename}: {base.size:,} bytes, over cache.filesize_limit (100)" in done.stderr
    assert on_disk(mirror) == {}
