"""Real, installable distributions built in memory for the fake upstream PyPI.

The wheels follow the binary distribution format (PEP 427 / PEP 491): pip and uv install them.
Every timestamp and every "random" byte is fixed, so the same arguments always give the same
bytes — and so the same sha256 and the same PyPI-shaped file path.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import random
import re
import tarfile
import zipfile
from collections.abc import Iterable

# Zip cannot store times before 1980; a fixed date keeps the archives reproducible.
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)
_TAR_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z
_PADDING_NAME = "_padding.bin"


def dist_name(name: str) -> str:
    """The distribution part of a wheel or sdist filename (runs of ``-_.`` become ``_``)."""
    return re.sub(r"[-_.]+", "_", name)


def package_name(name: str) -> str:
    """The importable package a built distribution contains."""
    return dist_name(name).lower()


def core_metadata(
    name: str,
    version: str,
    *,
    dependencies: Iterable[str] = (),
    requires_python: str | None = None,
) -> bytes:
    """A core metadata file (Metadata-Version 2.1), as a wheel's METADATA or an sdist's PKG-INFO."""
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: Test distribution {name} {version}",
    ]
    if requires_python is not None:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {dependency}" for dependency in dependencies)
    return ("\n".join(lines) + "\n\n").encode()


def padding_bytes(name: str, version: str, size: int) -> bytes:
    """Incompressible bytes, the same for the same (name, version, size)."""
    seed = hashlib.sha256(f"{name}\0{version}\0{size}".encode()).digest()
    return random.Random(seed).randbytes(size)


def _record_entry(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(
    name: str,
    version: str,
    *,
    dependencies: Iterable[str] = (),
    requires_python: str | None = None,
    extra_bytes: int = 0,
) -> tuple[str, bytes, bytes]:
    """Build ``{dist}-{version}-py3-none-any.whl``; returns (filename, wheel bytes, METADATA)."""
    if extra_bytes < 0:
        raise ValueError("extra_bytes must be >= 0")
    dist = dist_name(name)
    package = package_name(name)
    dist_info = f"{dist}-{version}.dist-info"
    metadata = core_metadata(
        name, version, dependencies=tuple(dependencies), requires_python=requires_python
    )
    wheel_file = (
        b"Wheel-Version: 1.0\n"
        b"Generator: tests.wheelbuilder\n"
        b"Root-Is-Purelib: true\n"
        b"Tag: py3-none-any\n\n"
    )

    # (archive path, content, compressed?) in the order they are written; RECORD comes last.
    members: list[tuple[str, bytes, bool]] = [
        (f"{package}/__init__.py", f'__version__ = "{version}"\n'.encode(), True),
    ]
    if extra_bytes:
        # Stored, not deflated: the wheel grows by exactly this much (plus zip headers).
        members.append(
            (f"{package}/{_PADDING_NAME}", padding_bytes(name, version, extra_bytes), False)
        )
    members.append((f"{dist_info}/METADATA", metadata, True))
    members.append((f"{dist_info}/WHEEL", wheel_file, True))
    record_path = f"{dist_info}/RECORD"
    record_lines = [_record_entry(path, data) for path, data, _ in members]
    record_lines.append(f"{record_path},,")
    members.append((record_path, ("\n".join(record_lines) + "\n").encode(), True))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data, compressed in members:
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, so the permission bits above are honoured
            archive.writestr(info, data)
    filename = f"{dist}-{version}-py3-none-any.whl"
    return filename, buffer.getvalue(), metadata


def build_sdist(
    name: str,
    version: str,
    *,
    dependencies: Iterable[str] = (),
    requires_python: str | None = None,
) -> tuple[str, bytes]:
    """Build ``{dist}-{version}.tar.gz`` holding PKG-INFO, pyproject.toml and the package."""
    dist = dist_name(name)
    package = package_name(name)
    root = f"{dist}-{version}"
    deps = tuple(dependencies)
    pkg_info = core_metadata(name, version, dependencies=deps, requires_python=requires_python)
    pyproject_lines = [
        "[build-system]",
        'requires = ["setuptools>=68"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f'name = "{name}"',
        f'version = "{version}"',
        "dependencies = [" + ", ".join(f'"{dep}"' for dep in deps) + "]",
    ]
    if requires_python is not None:
        pyproject_lines.append(f'requires-python = "{requires_python}"')
    members = [
        (f"{root}/PKG-INFO", pkg_info),
        (f"{root}/pyproject.toml", ("\n".join(pyproject_lines) + "\n").encode()),
        (f"{root}/{package}/__init__.py", f'__version__ = "{version}"\n'.encode()),
    ]

    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, data in members:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    # gzip stores a timestamp and a filename in its header: fix the first, omit the second.
    gz_buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz_buffer, mtime=0) as compressed:
        compressed.write(tar_buffer.getvalue())
    return f"{dist}-{version}.tar.gz", gz_buffer.getvalue()
