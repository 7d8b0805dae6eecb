"""The one canonical URL of a simple-index page. Any other spelling (duplicate or encoded
slashes, escaped characters, a non-normalised name, a missing trailing slash) is redirected to
it: answered as it is, the page's relative links would resolve to wrong URLs."""

from __future__ import annotations

from pypi_mirror.names import is_valid_project_name, normalize


def canonical_simple(prefix: str, rest: str) -> str | None:
    """The canonical URL for ``{prefix}/simple{rest}`` (``rest`` already unescaped), or None
    when it names no page (404)."""
    segments = [segment for segment in rest.split("/") if segment]
    if not segments:
        return f"{prefix}/simple/"
    if len(segments) == 1 and is_valid_project_name(segments[0]):
        return f"{prefix}/simple/{normalize(segments[0])}/"
    return None
