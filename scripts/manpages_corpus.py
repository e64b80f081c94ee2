"""A large-alphabet corpus from Debian's translated manual pages, stripped of their roff markup.

Usage::

    apt-get install manpages-zh            # or manpages-ja
    python scripts/manpages_corpus.py zh manpages-zh.txt      # zh_CN and zh_TW pages
    python scripts/manpages_corpus.py zh ja manpages-cjk.txt  # both: about 4,000 distinct characters

Each page is read from /usr/share/man/<lang>/man*/ (gzip or plain), its roff
requests dropped except those that carry text (headings, font macros, tags),
inline escapes removed or turned into their characters, and its paragraphs
written one after another. Pages come in the order of a hash of their paths,
so the same packages give the same file, and a contiguous split (the last 10%
validates) holds the same mix of languages and scripts as the rest: in path
order, the last pages of ``zh`` are all Traditional Chinese (zh_TW) and those
of ``zh ja`` all Japanese. ``--path-order`` keeps path order. Pages that are not UTF-8, or only point at another page (``.so``),
are skipped. What is left is the pages' own prose, in the alphabet of the
language: thousands of distinct characters.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import sys
from collections import Counter
from pathlib import Path

LANGS = {"zh": ["zh_CN", "zh_TW"], "ja": ["ja"]}
# Requests whose arguments are text: headings, font macros, tagged paragraphs.
TEXT_REQUESTS = {
    "SH",
    "SS",
    "B",
    "I",
    "SM",
    "SB",
    "BR",
    "BI",
    "IB",
    "IR",
    "RB",
    "RI",
    "IP",
    "TQ",
    "OP",
    "Nm",
    "Nd",
    "Sh",
    "Ss",
    "Dt",
    "Fl",
    "Ar",
    "Op",
    "Pa",
    "Xr",
    "Em",
    "Sy",
    "It",
    "Dl",
    "Cm",
    "Ev",
    "Li",
}
NAMED = {
    "em": "—",
    "en": "–",
    "aq": "'",
    "dq": '"',
    "lq": "“",
    "rq": "”",
    "oq": "‘",
    "cq": "’",
    "hy": "-",
    "bu": "•",
    "co": "©",
    "rg": "®",
    "tm": "™",
    "mu": "×",
    "di": "÷",
    "<=": "≤",
    ">=": "≥",
    "->": "→",
    "<-": "←",
    "ti": "~",
    "ha": "^",
    "rs": "\\",
    "ga": "`",
    "dg": "†",
    "de": "°",
    "+-": "±",
}
ESCAPE = re.compile(
    r"""\\(?:
      f(?:\[[^\]]*\]|\(..|.)          # font changes
    | s[+-]?(?:\[[^\]]*\]|\(..|\d+)   # size changes
    | \*(?:\[[^\]]*\]|\(..|.)         # strings
    | n(?:\[[^\]]*\]|\(..|.)          # number registers
    | \((..)                          # named characters \(xx
    | \[([^\]]*)\]                    # named characters \[xx]
    | [kz](?:.)                        # marks
    | [hvwlLoDHSxZbX]'[^']*'          # motions, widths, drawing
    | (.)                             # one-character escapes
)""",
    re.VERBOSE,
)
ONE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": "\t", ".": ".", "'": "'", "`": "`"}


def _escape(m: re.Match) -> str:
    named = m.group(1) or m.group(2)
    if named is not None:
        return NAMED.get(named, "")
    one = m.group(3)
    return ONE.get(one, "") if one is not None else ""


def _arguments(rest: str) -> str:
    """A request's arguments as text: quoted arguments keep their spaces, the quotes go."""
    words = re.findall(r'"((?:[^"]|"")*)"|(\S+)', rest)
    return " ".join((q.replace('""', '"') if q else w) for q, w in words)


def strip_roff(source: str) -> str:
    """The text of a roff page: paragraphs separated by blank lines, markup gone."""
    out: list[str] = []
    skipping = None  # inside a macro definition (.de ... ..) or an ignored block
    for line in source.splitlines():
        if skipping is not None:
            if line.strip() == skipping:
                skipping = None
            continue
        if line.startswith(('.\\"', "'\\\"", ".\\#", '\\"')):
            continue
        if line.startswith((".", "'")):
            m = re.match(r"[.']\s*(\S*)\s*(.*)", line)
            name, rest = (m.group(1), m.group(2)) if m else ("", "")
            if name in ("de", "de1", "am", "ig"):
                skipping = ".." if name != "ig" or not rest else "." + rest.split()[0]
                continue
            if name in TEXT_REQUESTS and rest:
                text = _arguments(rest)
                if name in ("SH", "SS", "Sh", "Ss"):
                    out.append("")
                out.append(text)
                continue
            if name in ("PP", "P", "LP", "sp", "TP", "IP", "Pp", "br"):
                out.append("")
            continue
        out.append(line)
    text = ESCAPE.sub(_escape, "\n".join(out))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def pages(lang: str) -> list[Path]:
    found = []
    for folder in LANGS[lang]:
        found += sorted(p for p in Path("/usr/share/man", folder).glob("man*/*") if p.is_file())
    return found


def read_page(path: Path) -> str | None:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.lstrip().startswith(".so ") and len(text.strip().splitlines()) == 1:
        return None
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lang", nargs="+", choices=sorted(LANGS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--path-order", action="store_true", help="pages in path order, not mixed")
    args = ap.parse_args()
    found = []
    for lang in dict.fromkeys(args.lang):
        these = pages(lang)
        if not these:
            print(
                f"no manual pages in /usr/share/man/{{{','.join(LANGS[lang])}}}; install "
                f"manpages-{lang} first (apt-get install manpages-{lang})",
                file=sys.stderr,
            )
            return 2
        found += these
    if not args.path_order:
        found.sort(key=lambda p: hashlib.sha256(str(p).encode()).digest())
    texts, skipped = [], 0
    for path in found:
        page = read_page(path)
        if page is None:
            skipped += 1
            continue
        texts.append(strip_roff(page))
    text = "\n".join(texts)
    args.out.write_text(text, encoding="utf-8")
    counts = Counter(text)
    print(f"{args.out}: {len(texts)} pages ({skipped} skipped), {len(text):,} characters, {len(counts):,} distinct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
