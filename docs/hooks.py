"""MkDocs hooks: the reference pages that are generated, never written by hand.

A page holds a marker where generated text goes; the build replaces it:

* ``<!-- generated:cli -->``: every ``chargen`` subcommand, its usage and every
  flag with its default and help, read from ``chargen.cli.build_parser()``;
* ``<!-- generated:options -->``: every option of ``chargen train`` and
  ``chargen prepare`` as a TOML key, with its type, default, range and whether
  ``--resume`` may change it, read from the config dataclasses;
* ``<!-- generated:presets -->``: the presets' values, from ``PRESETS``.

A marker left in a page after the build, or a generated page that lost its
marker, fails the build (``mkdocs build --strict``): the reference cannot go
stale or silently disappear.
"""

from __future__ import annotations

import argparse
import logging
import re

log = logging.getLogger("mkdocs.plugins.chargen")

MARKER = re.compile(r"<!-- generated:(\w+) -->")
# Each generated page, and the markers it must hold.
GENERATED_PAGES = {"reference/cli.md": {"cli"}, "reference/config.md": {"options", "presets"}}


def _cell(text: object) -> str:
    """Text for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return "`" + "` \\| `".join(str(c) for c in action.choices) + "`"
    if action.metavar is not None:
        return f"`{action.metavar}`"
    return f"`{action.dest.upper()}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def cli_reference() -> str:
    """Markdown for every subcommand of ``chargen``: usage, then a table of flags per group."""
    from chargen.cli import build_parser

    parser = build_parser()
    out = ["Generated from the parser at build time: what `chargen COMMAND --help` prints, as tables.", ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    for name, sub in _subparsers(parser).items():
        out += [f"## `chargen {name}`", "", _cell(sub.description or ""), ""]
        out += ["```text", sub.format_usage().strip().removeprefix("usage: "), "```", ""]
        for group in sub._action_groups:
            actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS and a.dest != "help"]
            if not actions:
                continue
            title = {"positional arguments": "Arguments", "options": "Options"}.get(group.title, group.title)
            out += [f"**{title[:1].upper() + title[1:]}**", "", "| flag | value | what it does |", "|---|---|---|"]
            for a in actions:
                names = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.metavar or a.dest}`"
                out.append(f"| {names} | {_value(a) if a.option_strings else ''} | {_cell(_help(sub, a))} |")
            out.append("")
    return "\n".join(out)


def _range(spec) -> str:
    parts = []
    if spec.minimum is not None:
        parts.append(f"≥ {spec.minimum:g}")
    if spec.above is not None:
        parts.append(f"> {spec.above:g}")
    if spec.below is not None:
        parts.append(f"< {spec.below:g}")
    if spec.maximum is not None:
        parts.append(f"≤ {spec.maximum:g}")
    if spec.choices:
        parts.append(" \\| ".join(f"`{c}`" for c in spec.choices))
    return ", ".join(parts)


def options_reference() -> str:
    """Markdown tables of every option of ``chargen train`` (and ``prepare``), by config class."""
    from chargen.config import ModelConfig, PrepareOptions, SampleOptions, TrainConfig
    from chargen.config.options import specs

    out = []
    classes = [
        (PrepareOptions, "Corpus (`PrepareOptions`): `chargen prepare` and `chargen train`"),
        (ModelConfig, "Model (`ModelConfig`): `chargen train`"),
        (TrainConfig, "Training (`TrainConfig`): `chargen train`"),
        (SampleOptions, "Sampling (`SampleOptions`): `chargen sample`, `Sampler`"),
    ]
    for cls, title in classes:
        out += [
            f"### {title}",
            "",
            "| TOML key / flag | Python name | type | default | allowed | resumable | what it is |",
        ]
        out.append("|---|---|---|---|---|---|---|")
        for name, spec in specs(cls).items():
            kind = getattr(spec.kind, "__name__", str(spec.kind)) + (" or none" if spec.optional else "")
            default = "" if spec.default is None else f"`{spec.default!r}`"
            resumable = "yes" if spec.resumable else ""
            key = f"`{spec.flag}` (`--no-{spec.flag}`)" if spec.kind is bool and spec.default else f"`{spec.flag}`"
            out.append(f"| {key} | `{name}` | {kind} | {default} | {_range(spec)} | {resumable} | {_cell(spec.help)} |")
        out.append("")
    return "\n".join(out)


def presets_reference() -> str:
    """Markdown table of the presets: the options each one sets."""
    from chargen.config import OPTION_CLASSES, PRESETS
    from chargen.config.options import specs

    flags = {name: spec.flag for cls in OPTION_CLASSES for name, spec in specs(cls).items()}
    keys = [k for k in flags if any(k in values for values in PRESETS.values())]
    out = ["| option | " + " | ".join(f"`{p}`" for p in PRESETS) + " |", "|---|" + "---|" * len(PRESETS)]
    for k in keys:
        row = [f"`{PRESETS[p][k]!r}`" if k in PRESETS[p] else "" for p in PRESETS]
        out.append(f"| `--{flags[k]}` | " + " | ".join(row) + " |")
    return "\n".join(out)


GENERATORS = {"cli": cli_reference, "options": options_reference, "presets": presets_reference}


def expand(markdown: str, page: str) -> str:
    """``markdown`` with every marker replaced; a generated page must hold all of its markers."""
    found = set(MARKER.findall(markdown))
    missing = GENERATED_PAGES.get(page, set()) - found
    if missing:
        raise ValueError(f"{page} lost its generated section(s): {', '.join(sorted(missing))}")
    unknown = found - set(GENERATORS)
    if unknown:
        raise ValueError(f"{page}: no generator for {', '.join(sorted(unknown))}")
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # the mkdocs hook
    return expand(markdown, page.file.src_uri)


def on_files(files, config):  # the mkdocs hook: a generated page that is missing fails the build
    for path in GENERATED_PAGES:
        if files.get_file_from_path(path) is None:
            raise ValueError(f"docs/{path} is missing: the reference it generates would be gone")
    return files


ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc):(<code>)~?")


def on_page_content(html: str, page, config, files) -> str:  # the mkdocs hook
    """The docstrings' Sphinx roles (``:func:`name```) shown as the code they name."""
    return ROLE.sub(r"\1", html)
