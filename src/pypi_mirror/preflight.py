"""Checks of the environment a configuration needs: the ones the schema (config.py) cannot
make because they depend on the filesystem or the network stack. ``serve`` and ``sync`` run
them before they start or write anything; ``pypi-mirror check`` prints every one of them.

Nothing here writes: writability is asked of the kernel (``access(2)``, which also reports a
read-only filesystem), an existing log file is opened for appending and closed unchanged, and
the listen address is bound once and released.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pypi_mirror.config import Config, tier_layout_problems

# "dry-run": sync --dry-run, which reads the repository and writes nothing.
Command = Literal["serve", "sync", "dry-run", "check"]
_WRITABLE = os.W_OK | os.X_OK  # create and rename entries in a folder


@dataclass(frozen=True)
class Finding:
    """One check's result; ``key`` is the configuration key it concerns."""

    key: str
    ok: bool
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def preflight(config: Config, command: Command) -> list[Finding]:
    """The problems that would make ``command`` fail, each naming its key; empty when none."""
    return [finding for finding in findings(config, command) if not finding.ok]


def findings(config: Config, command: Command) -> list[Finding]:
    """Every local check that ``command`` depends on, passed or not."""
    serves = command in ("serve", "check")
    writes = command != "dry-run"
    result = [_folder("repo_path", Path(os.path.abspath(config.repo_path)), writes=writes)]
    result += _tiers(config, writable=command in ("sync", "check"))
    if serves:
        result.append(_log_path(config))
        result += _tls(config)
        result.append(_listen(config))
    return result


# -- folders ---------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    return "a regular file" if stat.S_ISREG(mode) else "not a folder"


def _folder(key: str, path: Path, *, create: bool = True, writes: bool = True) -> Finding:
    """A folder that must be writable (with ``writes``); with ``create``, one that may not
    exist yet (it is created at start)."""
    shown = repr(str(path))
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the latter: a file on the way there
        mode = None
    except OSError as error:
        return Finding(key, False, f"cannot look at {shown}: {error.strerror}")
    if mode is not None:
        if not stat.S_ISDIR(mode):
            return Finding(key, False, f"{shown} is {_kind(mode)}; it must be a folder")
        if not writes:
            return Finding(key, True, f"{shown} is a folder")
        if not os.access(path, _WRITABLE):
            return Finding(key, False, f"folder {shown} is not writable by uid {os.geteuid()}")
        return Finding(key, True, f"{shown} is a writable folder")
    if not create:
        return Finding(key, False, f"folder {shown} does not exist")
    if not writes:
        return Finding(key, True, f"{shown} does not exist yet")
    # Created at start: the nearest existing ancestor must be a folder we may write.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return Finding(key, False, f"cannot create {shown}: {str(ancestor)!r} is not a folder")
    if not os.access(ancestor, _WRITABLE):
        return Finding(
            key,
            False,
            f"cannot create {shown}: folder {str(ancestor)!r} is not writable by uid "
            f"{os.geteuid()}",
        )
    return Finding(key, True, f"{shown} does not exist yet and will be created")


def _tiers(config: Config, *, writable: bool) -> list[Finding]:
    tiers = config.cache.tiers or []
    if not tiers:
        return []
    # config.py compared the paths as written; here the resolved ones (symlinks), and the
    # folders themselves (a bind mount is one folder under two names).
    real = [Path(os.path.realpath(tier.path)) for tier in tiers]
    layout = tier_layout_problems(Path(os.path.realpath(config.repo_path)), real)
    result = [
        Finding(key, False, f"{message} (after resolving symlinks)") for key, message in layout
    ]
    result += _same_folders(config)
    if result:
        return result
    for index, tier in enumerate(tiers):
        key = f"cache.tiers[{index}].path"
        if writable:
            result.append(_folder(key, tier.path, create=False))
        else:
            result.append(Finding(key, True, f"{str(tier.path)!r} exists"))
    return result


def _same_folders(config: Config) -> list[Finding]:
    tiers = config.cache.tiers or []
    seen: dict[tuple[int, int], int] = {}
    result = []
    for index, tier in enumerate(tiers):
        try:
            info = os.stat(tier.path)
        except OSError:
            continue
        first = seen.setdefault((info.st_dev, info.st_ino), index)
        if first != index:
            message = (
                f"{str(tier.path)!r} is the same folder as cache.tiers[{first}] "
                f"({tiers[first].path}) under another name"
            )
            result.append(Finding(f"cache.tiers[{index}].path", False, message))
    return result


# -- files -------------------------------------------------------------------------------------


def _log_path(config: Config) -> Finding:
    key = "log.path"
    if not config.log.path:
        return Finding(key, True, "empty: no access log")
    path = Path(os.path.abspath(config.log.path))
    shown = repr(str(path))
    if path.is_dir():
        return Finding(
            key, False, f"{shown} is a folder; name a file in it, e.g. {path}/access.log"
        )
    if path.exists():
        try:
            # Opened the way the server opens it, and closed unchanged.
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
        except OSError as error:
            return Finding(key, False, f"cannot write {shown}: {error.strerror}")
        return Finding(key, True, f"{shown} is writable")
    folder = path.parent
    if not folder.exists():
        return Finding(key, False, f"cannot create {shown}: folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        return Finding(key, False, f"cannot create {shown}: {str(folder)!r} is not a folder")
    if not os.access(folder, _WRITABLE):
        return Finding(
            key,
            False,
            f"cannot create {shown}: folder {str(folder)!r} is not writable by uid {os.geteuid()}",
        )
    return Finding(key, True, f"{shown} will be created")


def _tls(config: Config) -> list[Finding]:
    if config.tls is None:
        return [Finding("tls", True, "not set: plain HTTP")]
    result = []
    for key, path in (("tls.cert", config.tls.cert), ("tls.key", config.tls.key)):
        shown = repr(str(path))
        if not path.is_file():
            result.append(Finding(key, False, f"{shown} does not exist or is not a file"))
        elif not os.access(path, os.R_OK):
            result.append(Finding(key, False, f"{shown} is not readable by uid {os.geteuid()}"))
        else:
            result.append(Finding(key, True, f"{shown} is readable"))
    return result


# -- network -----------------------------------------------------------------------------------


def _listen(config: Config) -> Finding:
    """Bind once without SO_REUSEPORT: fails if anything (even another mirror) holds the port."""
    host, port = config.listen_host_port
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    shown = f"{host or '*'}:{port}"
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
    except OSError as error:
        busy = " (is pypi-mirror serve running already?)" if error.errno == errno.EADDRINUSE else ""
        return Finding("listen", False, f"cannot bind {shown}: {error.strerror}{busy}")
    finally:
        probe.close()
    return Finding("listen", True, f"{shown} is free")
