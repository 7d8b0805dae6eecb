"""PEP 691 content negotiation (pure)."""

from __future__ import annotations

TEXT_HTML = "text/html"
V1_HTML = "application/vnd.pypi.simple.v1+html"
V1_JSON = "application/vnd.pypi.simple.v1+json"
_ALIASES = {
    "application/vnd.pypi.simple.latest+html": V1_HTML,
    "application/vnd.pypi.simple.latest+json": V1_JSON,
}
# What we can answer with, in the order we prefer when a client likes several equally.
# A bare `*/*` (or no Accept at all) gets HTML, as on PyPI: the format every installer reads.
_OFFERED = (TEXT_HTML, V1_HTML, V1_JSON)


def _parse_accept(header: str) -> list[tuple[str, float]]:
    ranges: list[tuple[str, float]] = []
    for part in header.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        quality = 1.0
        for param in fields[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
                quality = min(max(quality, 0.0), 1.0)
        ranges.append((_ALIASES.get(media, media), quality))
    return ranges


def _match(offered: str, media_range: str) -> int:
    """Specificity of a match (2 exact, 1 type/*, 0 */*), or -1 for none."""
    if media_range == offered:
        return 2
    if media_range == "*/*":
        return 0
    kind = offered.split("/", 1)[0]
    if media_range == f"{kind}/*":
        return 1
    return -1


def choose_content_type(accept: str | None, format_param: str | None = None) -> str | None:
    """The concrete type to answer with, or None when nothing offered is acceptable (406).

    ``?format=`` overrides the Accept header (PEP 691). No header at all means ``*/*``.
    """
    header = format_param if format_param else accept
    if header is None or not header.strip():
        header = "*/*"
    ranges = _parse_accept(header)
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for preference, offered in enumerate(_OFFERED):
        quality, specificity = 0.0, -1
        for media_range, q in ranges:
            s = _match(offered, media_range)
            if s > specificity:  # the most specific matching range decides the quality
                quality, specificity = q, s
        if specificity < 0 or quality <= 0:
            continue
        key = (quality, specificity, -preference)
        if best is None or key > best:
            best, chosen = key, offered
    return chosen
