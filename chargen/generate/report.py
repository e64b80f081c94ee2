"""Ways to show an :class:`~chargen.generate.inspect.Inspection`: the text shaded by surprise in a terminal
(:func:`ansi`), the JSON the CLI writes and the server sends (:func:`json_text`), and one self-contained
HTML file (:func:`html`: the data and ``web/inspect.js`` inside it, nothing fetched)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inspect import Inspection

__all__ = ["SHADES", "ansi", "asset", "html", "json_text", "shade"]

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
        out.append(char)
    out.append("\x1b[0m")
    return "".join(out)


def legend() -> str:
    """One line saying what each shade means."""
    parts, low = [], 0.0
    for limit, colour in SHADES:
        label = f"{low:g}+" if limit == float("inf") else f"{low:g}-{limit:g}"
        parts.append(f"\x1b[30;48;5;{colour}m {label} \x1b[0m")
        low = limit
    return "surprise (nats): " + " ".join(parts)


def json_text(inspection: Inspection) -> str:
    return json.dumps(inspection.to_json(), ensure_ascii=False, separators=(",", ":"))


def asset(name: str) -> str:
    """A file of the inspector's view (``inspect.js``, ``inspect.css``), shipped in the package."""
    from importlib.resources import files

    return files("chargen.generate").joinpath("web").joinpath(name).read_text(encoding="utf-8")


def html(inspection: Inspection, title: str) -> str:
    """One HTML file that shows the inspection: the text shaded by surprise (each character an element with
    its ``data-logprob``), its guesses on hover or tap, a unit picker, the units that track the text, and
    the gates' saturation. Self-contained: the data, the script and the style are inside."""
    import html as markup

    data = json_text(inspection).replace("</", "<\\/")  # no "</script>" inside the script element
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{markup.escape(title)}</title>'
        f"<style>{asset('inspect.css')}</style></head><body>"
        f'<h1>{markup.escape(title)}</h1><div id="inspect"></div>'
        f'<script id="chargen-data" type="application/json">{data}</script>'
        f"<script>{asset('inspect.js')}</script>"
        "<script>chargenInspect(document.getElementById('inspect'), "
        "JSON.parse(document.getElementById('chargen-data').textContent));</script>"
        "</body></html>\n"
    )
