"""Assemble chargen/generate/web/matvec.wat into the base64 string chargen.js carries (wasmtime's wat2wasm).

Usage::

    python scripts/build_wasm.py            # rewrite the MATVEC_WASM line of chargen.js
    python scripts/build_wasm.py --check    # exit 1 if chargen.js does not hold matvec.wat's bytes

The browser export needs no build step: the assembled bytes are committed in chargen.js, and
tests/generate/test_web_export.py checks that they are matvec.wat's.
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "chargen" / "generate" / "web"
LINE = re.compile(r'(const MATVEC_WASM = // [^\n]*\n  )"[A-Za-z0-9+/=]*";')


def assembled() -> str:
    """matvec.wat's module as base64."""
    from wasmtime import wat2wasm

    return base64.b64encode(bytes(wat2wasm((WEB / "matvec.wat").read_text()))).decode("ascii")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that chargen.js is up to date")
    args = parser.parse_args()
    js_path = WEB / "chargen.js"
    js = js_path.read_text()
    if not LINE.search(js):
        print(f"no MATVEC_WASM line in {js_path}", file=sys.stderr)
        return 1
    new = LINE.sub(lambda m: f'{m.group(1)}"{assembled()}";', js)
    if args.check:
        print("up to date" if new == js else "chargen.js does not hold matvec.wat's bytes: run scripts/build_wasm.py")
        return 0 if new == js else 1
    js_path.write_text(new)
    print(f"wrote {len(base64.b64decode(assembled()))} bytes of WebAssembly into {js_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
