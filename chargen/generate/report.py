"""Ways to show an :class:`~chargen.generate.inspect.Inspection`: the text shaded by surprise in a terminal
(:func:`ansi`), the JSON the CLI writes and the server sends (:func:`json_text`), and one self-contained
HTML file (:func:`html`: the data and ``web/inspect.js`` inside it, nothing fetched)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inspect import Inspection

__all__ = ["MAX_HTML", "SHADES", "ansi", "asset", "html", "html_pieces", "json_pieces", "json_text", "shade"]

MAX_HTML = 200_000  # characters a report shows: each is an element, and a browser slows past a few 100,000
# Surprise (nats) above each threshold takes the next shade: xterm-256 backgrounds from white to deep red.
SHADES = ((0.5, 231), (1.0, 224), (2.0, 217), (3.0, 210), (4.5, 203), (float("inf"), 196))


def shade(surprise: float) -> int:
    """The xterm-256 colour of a character whose surprise is ``surprise`` nats."""
    return next(colour for limit, colour in SHADES if surprise < limit)


def ansi(inspection: Inspection) -> str:
    """The text, each character on the background of its surprise (black letters), newlines kept plain."""
    out, current = [], None
    for char, lp in zip(inspection.chars, inspection.logprobs):
        colour = shade(-float(lp))
        if char == "\n":
            out.append("\x1b[0m\n")
            current = None
            continue
        if colour != current:
            out.append(f"\x1b[30;48;5;{colour}m")
            current = colour
        out.append(_visible(char))
    out.append("\x1b[0m")
    return "".join(out)


def _visible(char: str) -> str:
    """A control character as its picture (ESC as U+241B), so that a text cannot drive the terminal."""
    code = ord(char)
    if code < 0x20 and char != "\t":
        return chr(0x2400 + code)
    return "\u2421" if code == 0x7F else char


def legend() -> str:
    """One line saying what each shade means."""
    parts, low = [], 0.0
    for limit, colour in SHADES:
        label = f"{low:g}+" if limit == float("inf") else f"{low:g}-{limit:g}"
        parts.append(f"\x1b[30;48;5;{colour}m {label} \x1b[0m")
        low = limit
    return "surprise (nats): " + " ".join(parts)


def json_text(inspection: Inspection) -> str:
    return _dump(inspection.to_json())


def _dump(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_pieces(inspection: Inspection, rows: int = 4096) -> Iterator[str]:
    """The text of :func:`json_text`, piece by piece: ``rows`` positions of a field at a time, so that a long
    text's JSON is written without being held whole (its arrays are held as arrays)."""
    n = len(inspection.chars)

    def array(values: Callable[[int, int], list]) -> Iterator[str]:
        yield "["
        for lo in range(0, n, rows):
            yield ("," if lo else "") + _dump(values(lo, min(lo + rows, n)))[1:-1]
        yield "]"

    for i, name in enumerate(("chars", "logprobs", "top")):
        yield ("{" if i == 0 else ",") + _dump(name) + ":"
        yield from array(partial(inspection.column, name))
    yield ',"units":{'
    for i, (layer, kinds) in enumerate(inspection.units.items()):
        yield ("," if i else "") + _dump(layer) + ":{"
        for j, kind in enumerate(kinds):
            yield ("," if j else "") + _dump(kind) + ":"
            yield from array(partial(inspection.unit_rows, layer, kind))
        yield "}"
    yield "}"
    for name in ("unit_ids", "correlations", "gates"):
        yield "," + _dump(name) + ":" + _dump(getattr(inspection, name))
    yield "}"


def asset(name: str) -> str:
    """A file of the inspector's view (``inspect.js``, ``inspect.css``), shipped in the package."""
    from importlib.resources import files

    return files("chargen.generate").joinpath("web").joinpath(name).read_text(encoding="utf-8")


def html(inspection: Inspection, title: str) -> str:
    """One HTML file that shows the inspection (see :func:`html_pieces`)."""
    return "".join(html_pieces(inspection, title))


def html_pieces(inspection: Inspection, title: str) -> Iterator[str]:
    """One HTML file that shows the inspection, piece by piece: the text shaded by surprise (each character
    an element with its ``data-logprob``), its guesses on hover or tap, a unit picker, the units that track
    the text, and the gates' saturation. Self-contained: the data, the script and the style are inside."""
    import html as markup

    yield (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{markup.escape(title)}</title>'
        f"<style>{asset('inspect.css')}</style></head><body>"
        f'<h1>{markup.escape(title)}</h1><div id="inspect"></div>'
        '<script id="chargen-data" type="application/json">'
    )
    for piece in json_pieces(inspection):
        yield piece.replace("</", "<\\/")  # no "</script>" inside the script element (a string holds "</")
    yield (
        "</script>"
        f"<script>{asset('inspect.js')}</script>"
        "<script>chargenInspect(document.getElementById('inspect'), "
        "JSON.parse(document.getElementById('chargen-data').textContent));</script>"
        "</body></html>\n"
    )
