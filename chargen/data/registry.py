"""Named corpora: the registry, where they are looked for on disk, and their one-time download.

``registry.json`` lists each corpus's address, sha256, size, licence and
default split. A named corpus is looked for along a search path (``--corpora-dir``,
``$CHARGEN_CORPORA``, the ``corpora/`` folder of a source checkout, the user
cache); a copy found there is checked against the sha256 too. Otherwise it is
downloaded once into the user cache, unless ``CHARGEN_OFFLINE`` is set.

``pystdlib`` is built in: the running interpreter's standard-library sources,
which every machine has and which need no network.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import sys
import sysconfig
import urllib.request
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from ..errors import ChargenError
from ..files import atomic_write, file_sha256

# Standard-library folders that hold tests, or other environments' packages.
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@cache
def registry() -> dict[str, dict]:
    """The corpora chargen knows by name: ``{name: entry}``."""
    with open(Path(__file__).with_name("registry.json"), encoding="utf-8") as f:
        return json.load(f)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where chargen keeps downloads and prepared corpora.

    ``cache_dir`` if given, else ``$CHARGEN_CACHE``, else
    ``$XDG_CACHE_HOME/chargen`` (``~/.cache/chargen``).
    """
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("CHARGEN_CACHE"):
        return Path(os.environ["CHARGEN_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "chargen"


def corpora_search_path(
    corpora_dirs: Sequence[str | os.PathLike] = (), cache_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Folders searched for a named corpus, in order.

    ``--corpora-dir`` flags, then ``$CHARGEN_CORPORA`` (``os.pathsep``
    separated), then the ``corpora/`` folder of a source checkout, then the
    user cache, which is also where downloads go.
    """
    dirs = [Path(d).expanduser() for d in corpora_dirs]
    env = os.environ.get("CHARGEN_CORPORA", "")
    dirs += [Path(d).expanduser() for d in env.split(os.pathsep) if d]
    repo_corpora = Path(__file__).resolve().parents[2] / "corpora"
    if repo_corpora.is_dir():
        dirs.append(repo_corpora)
    dirs.append(cache_root(cache_dir) / "corpora")
    return dirs


def stdlib_files() -> tuple[Path, list[Path]]:
    """The running interpreter's standard-library ``.py`` files, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py") and not fnmatch.fnmatch(f, "test_*.py")]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, files


def downloads_off() -> bool:
    """Whether downloads are off: ``CHARGEN_OFFLINE`` set to anything but 0."""
    return os.environ.get("CHARGEN_OFFLINE", "") not in ("", "0")


def find_named_corpus(
    name: str,
    *,
    corpora_dirs: Sequence[str | os.PathLike] = (),
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
) -> Path:
    """Path of a registry corpus: found on the search path, or downloaded once.

    A file found locally is checked against the registry's sha256 too, so a
    truncated or edited copy is reported instead of silently trained on.
    """
    entry = registry()[name]
    search = corpora_search_path(corpora_dirs, cache_dir)
    for folder in search:
        candidate = folder / entry["filename"]
        if candidate.is_file():
            digest = file_sha256(candidate)
            if digest != entry["sha256"]:
                raise ChargenError(
                    f"{candidate} has sha256 {digest[:12]}…, but {name} should have "
                    f"{entry['sha256'][:12]}…; delete or replace that file"
                )
            return candidate
    if offline is None:
        offline = downloads_off()
    target = search[-1] / entry["filename"]
    where = f"put {entry['filename']} in one of: {', '.join(str(d) for d in search)}"
    if offline:
        raise ChargenError(f"{name} is not on the local search path and downloads are off; {where}")
    download(entry["url"], target, entry["sha256"], name=name, hint=where, size=entry.get("size"))
    return target


def download(
    url: str, target: Path, sha256: str, *, name: str, hint: str, size: int | None = None, timeout: float = 30
) -> None:
    """Fetch ``url`` to ``target``: streamed to a temporary file beside it, stopped as soon as it grows
    past ``size`` bytes (the registry's figure), and renamed into place only once its sha256 matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    got = 0
    with atomic_write(target) as tmp:
        try:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                _check_length(resp.headers.get("Content-Length"), size, name, url, hint)
                while chunk := resp.read(1 << 20 if size is None else min(1 << 20, size + 1 - got)):
                    got += len(chunk)
                    if size is not None and got > size:
                        raise ChargenError(
                            f"download of {name} from {url} is larger than the {size:,} bytes it "
                            f"should have; stopped. Try again later, or {hint}"
                        )
                    h.update(chunk)
                    out.write(chunk)
        except ChargenError:
            raise
        except (OSError, ValueError, http.client.HTTPException) as e:  # network, URL, or a broken response
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e) or type(e).__name__
            reason = " ".join(str(reason).split())[:200]  # a server's bytes, on one line
            raise ChargenError(f"could not download {name} from {url} ({reason}); {hint}") from None
        if h.hexdigest() != sha256:
            raise ChargenError(
                f"download of {name} from {url} has sha256 {h.hexdigest()[:12]}… ({got:,} bytes), "
                f"expected {sha256[:12]}…; try again later, or {hint}"
            )
    print(f"chargen: downloaded {name} to {target}", file=sys.stderr)


def _check_length(header: str | None, size: int | None, name: str, url: str, hint: str) -> None:
    """Refuse a response that announces the wrong size before reading any of it."""
    if size is None or header is None or not header.strip().isdigit() or int(header) == size:
        return
    raise ChargenError(
        f"{url} offers {int(header):,} bytes for {name}, which should have {size:,}; try again later, or {hint}"
    )
