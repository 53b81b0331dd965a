"""The README (and the docs it links) stay true to the code: commands, options, settings
keys, environment variables, HTTP paths, make targets and links all exist.

These are the things that drift when code changes and prose does not. Commands are parsed
with the real CLI parser; settings keys are looked up in the settings' pydantic schema
(telefum/config.py), so a renamed option or key fails here, naming the README line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import tomllib
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from telefum.cli import COMMANDS, build_parser
from telefum.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SHELL_LANGS = ("sh", "bash", "console")

# --- reading markdown ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Item:
    """One piece of a markdown file, in document order."""

    kind: str  # "heading" | "code" (a line of a shell block) | "span" (inline code)
    text: str
    line: int


def items(path: Path) -> Iterator[Item]:
    """Headings, shell code lines and inline code spans, in order. Non-shell fenced blocks
    (output samples, diagrams, ini, toml) are skipped: they are not commands to run."""
    lang: str | None = None  # inside a fence: its language
    para: list[tuple[int, str]] = []

    def flush() -> Iterator[Item]:
        if not para:
            return
        text = "\n".join(t for _, t in para)
        offsets = [0]
        for _, t in para:
            offsets.append(offsets[-1] + len(t) + 1)
        for m in re.finditer(r"`([^`]+)`", text):
            idx = max(i for i, off in enumerate(offsets[:-1]) if off <= m.start())
            yield Item("span", " ".join(m.group(1).split()), para[idx][0])
        para.clear()

    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            yield from flush()
            lang = None if lang is not None else (stripped[3:].strip() or "")
            continue
        if lang is not None:
            if lang in SHELL_LANGS and stripped:
                yield Item("code", stripped, n)
            continue
        if stripped.startswith("#"):
            yield from flush()
            yield Item("heading", stripped, n)
        elif not stripped:
            yield from flush()
        else:
            para.append((n, line))
    yield from flush()


def telefum_argv(text: str) -> list[str] | None:
    """The arguments after a `telefum` executable in a shell line or span, up to the first
    shell operator or comment; None when the text runs no telefum."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: prose, not a command
        return None
    for i, tok in enumerate(tokens):
        if tok.rsplit("/", 1)[-1] == "telefum":
            argv: list[str] = []
            for t in tokens[i + 1 :]:
                if t and set(t) <= set("|&;<>()"):
                    break
                argv.append(t)
            return argv
    return None


GLOBAL_OPTIONS = {"-h", "--help", "--version", "-v", "--verbose", "--log-json"}


def command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def subparser(command: str, action: str | None = None) -> argparse.ArgumentParser:
    """The parser of `telefum COMMAND [ACTION]` (ACTION: dlq list, config check...)."""

    def choices(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                return dict(a.choices)
        return {}

    p = choices(build_parser([command]))[command]
    if action is not None and action in choices(p):
        p = choices(p)[action]
    return p


def options_of(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def parse(argv: list[str]) -> str:
    """Parse with the real CLI; returns argparse's complaint, or "" when it parses."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                return err.getvalue().strip().splitlines()[-1]
    return ""


def readme_commands() -> list[tuple[int, list[str]]]:
    out = []
    for item in items(README):
        if item.kind in ("code", "span"):
            argv = telefum_argv(item.text)
            if argv and command_of(argv):
                out.append((item.line, argv))
    return out


# --- the settings schema -------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """`CrmTarget | None` -> CrmTarget; `tuple[AmiSettings, ...]` -> AmiSettings."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        origin = typing.get_origin(tp)
    if origin is tuple and _fields(typing.get_args(tp)[0]):
        return typing.get_args(tp)[0]
    return tp


def _fields(tp: Any) -> dict[str, Any]:
    """A section's keys -> their types (a pydantic model or dataclass); {} for a value."""
    fields = getattr(tp, "__pydantic_fields__", None) if isinstance(tp, type) else None
    return {name: f.annotation for name, f in (fields or {}).items()}


def schema_node(path: list[str]) -> Any:
    """The schema type at a dotted settings path, or raise KeyError naming the bad part.

    A `dict[str, X]` (agents, agent_tokens, sources) takes any key."""
    tp: Any = Settings
    for part in path:
        tp = _unwrap(tp)
        if _fields(tp):
            if part not in _fields(tp):
                raise KeyError(part)
            tp = _fields(tp)[part]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            raise KeyError(part)
    return _unwrap(tp)


def section_path(header: str) -> list[str]:
    """`crm.agents."101"` -> ["crm", "agents", "101"] (TOML's own key syntax)."""
    doc: Any = tomllib.loads(f"[{header}]\n")
    path = []
    while doc:
        (key,) = doc
        path.append(key)
        doc = doc[key]
    return path


def schema_has(path: list[str]) -> bool:
    try:
        schema_node(path)
    except KeyError:
        return False
    return True


def walk_toml(doc: Any, path: list[str]) -> Iterator[list[str]]:
    """Every key path of a parsed TOML document (array-of-tables entries as their table)."""
    if isinstance(doc, list) and doc and all(isinstance(d, dict) for d in doc):
        for entry in doc:
            yield from walk_toml(entry, path)
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield [*path, k]
            yield from walk_toml(v, [*path, k])


# --- commands and options ------------------------------------------------------------------


@pytest.mark.parametrize(("line", "argv"), readme_commands(), ids=lambda v: str(v))
def test_every_telefum_command_the_readme_shows_exists_and_parses(
    line: int, argv: list[str]
) -> None:
    command = command_of(argv)
    assert command in COMMANDS, f"README.md:{line}: `telefum {command}` is not a command"
    if len(argv) == 1:
        return  # a mention of the command, not a way to run it
    problem = parse(argv)
    assert not problem, f"README.md:{line}: `telefum {' '.join(argv)}`: {problem}"


def test_options_mentioned_on_their_own_belong_to_the_command_they_are_about() -> None:
    """`--watch` in the prose after `telefum status` must be an option of `status`."""
    current: tuple[str, str | None] | None = None
    checked = 0
    for item in items(README):
        if item.kind == "heading":
            current = None
            continue
        argv = telefum_argv(item.text)
        if argv is not None and command_of(argv):
            rest = [a for a in argv if not a.startswith("-")]
            current = (rest[0], rest[1] if len(rest) > 1 else None)
            continue
        if item.kind == "span" and re.match(r"--[a-z]", item.text):
            option = item.text.split()[0].split("=")[0]
            assert current is not None, f"README.md:{item.line}: {option} shown with no command"
            known = options_of(subparser(*current)) | GLOBAL_OPTIONS
            assert option in known, (
                f"README.md:{item.line}: {option} is not an option of `telefum "
                f"{' '.join(c for c in current if c)}`"
            )
            checked += 1
    assert checked >= 5  # the README does show options in its prose


def test_the_readme_shows_every_command_of_the_cli() -> None:
    shown = {command_of(argv) for _, argv in readme_commands()}
    assert set(COMMANDS) - shown == set()


def test_every_make_target_the_readme_names_is_in_the_makefile() -> None:
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named = set()
    for item in items(README):
        if item.kind in ("code", "span"):
            named |= set(re.findall(r"(?:^|\s)make ([a-z-]+)", item.text))
    assert {"demo", "test", "lint", "typecheck", "bench"} <= named
    assert named - targets == set()


# --- settings ------------------------------------------------------------------------------


def readme_settings_references() -> Iterator[tuple[int, list[str]]]:
    """`[section]`, `[section] key` and bare top-level keys in spans; and the keys listed in
    a table row whose first cell is a `[section]`."""
    text = README.read_text(encoding="utf-8").splitlines()
    for item in items(README):
        if item.kind != "span":
            continue
        m = re.fullmatch(r"\[\[?([^\]\s]+)\]\]?(?: ([a-z_]+))?", item.text)
        if m:
            yield item.line, [*section_path(m.group(1)), *([m.group(2)] if m.group(2) else [])]
    for n, line in enumerate(text, 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not (m := re.fullmatch(r"`\[([^\]\s]+)\]`", cells[0])):
            continue
        section = section_path(m.group(1))
        for key in re.findall(r"`([a-z_]+)`", " ".join(cells[1:])):
            yield n, [*section, key]


def test_every_settings_section_and_key_the_readme_names_exists() -> None:
    refs = list(readme_settings_references())
    assert len(refs) > 40  # the configuration table alone names most keys
    bad = [f"README.md:{n}: {'.'.join(p)}" for n, p in refs if not schema_has(p)]
    assert bad == []


def test_the_readme_names_every_section_of_the_settings() -> None:
    sections = {p[0] for _, p in readme_settings_references()}
    assert set(_fields(Settings)) - sections - {"spool_dir"} == set()
    assert "`spool_dir`" in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_settings_examples_in_the_docs_use_only_keys_that_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for block in re.findall(r"```toml\n(.*?)```", text, re.DOTALL):
        for path in walk_toml(tomllib.loads(block), []):
            assert schema_has(path), f"{doc.name}: {'.'.join(path)} is not a settings key"


def _settings_regions() -> dict[str, str]:
    """settings.toml cut at its (uncommented) table headers: header -> text."""
    regions: dict[str, str] = {"": ""}
    current = ""
    for line in (ROOT / "settings.toml").read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[\[?([^\]]+)\]\]?", line):
            current = ".".join(section_path(m.group(1)))
            regions.setdefault(current, "")
        regions[current] += line + "\n"
    return regions


def _schema_paths(tp: Any = Settings, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, annotation in _fields(_unwrap(tp)).items():
        yield (*path, name)
        # [ami.crm] is a [crm], [ami.backfill] a [backfill]
        if not (path and path[-1] == "ami" and name in ("crm", "backfill")):
            yield from _schema_paths(annotation, (*path, name))


def test_the_shipped_settings_toml_documents_every_key_the_loader_accepts() -> None:
    text = (ROOT / "settings.toml").read_text(encoding="utf-8")
    regions = _settings_regions()
    missing = []
    for path in _schema_paths():
        *section, key = path
        region = regions.get(".".join(section), "")
        written = re.search(rf"^\s*#?\s*{key}\s*=", region, re.MULTILINE)
        as_table = re.search(rf"^\s*#?\s*\[\[?{re.escape('.'.join(path))}[\].]", text, re.M)
        if not (written or as_table):
            missing.append(".".join(path))
    assert missing == []


# --- environment variables -----------------------------------------------------------------

SOURCES_TEXT = "\n".join(
    p.read_text(encoding="utf-8")
    for p in [*(ROOT / "telefum").rglob("*.py"), ROOT / "docker-compose.yml"]
)


def env_is_known(name: str) -> bool:
    """TELEFUM_<SECTION>__<KEY> that reaches a key (by PBX name too), or a variable the code
    or the compose file reads itself."""
    rest = name.removeprefix("TELEFUM_")
    if "__" in rest:
        parts = [p.lower() for p in rest.split("__")]
        return schema_has(parts) or (parts[0] == "ami" and schema_has([parts[0], *parts[2:]]))
    return schema_has([rest.lower()]) or f'"{name}"' in SOURCES_TEXT or name in SOURCES_TEXT


def test_every_environment_variable_the_readme_names_does_something() -> None:
    names = set(re.findall(r"\bTELEFUM_[A-Z0-9_]*[A-Z0-9]\b", README.read_text(encoding="utf-8")))
    assert {"TELEFUM_CRM__PASSWORD", "TELEFUM_AMI__SECRET", "TELEFUM_CONFIG"} <= names
    assert sorted(n for n in names if not env_is_known(n)) == []


# --- HTTP paths ------------------------------------------------------------------------------

_FS_ROOTS = {"etc", "opt", "var", "tmp", "usr", "path", "dev", "home", "proc"}


def routes() -> list[re.Pattern[str]]:
    """The paths the bridge (telefum/) and the reference CRM serve, as patterns."""
    sources = [*(ROOT / "telefum").glob("*.py"), ROOT / "crm_client" / "refcrm.py"]
    found = set()
    for src in sources:
        text = src.read_text(encoding="utf-8")
        found |= set(re.findall(r'add_(?:get|post)\("(/[^"]*)"', text))
        found |= set(re.findall(r'add_route\("[A-Z]+", "(/[^"]*)"', text))
    return [re.compile(re.sub(r"\\\{\w+\\\}", r"[^/]+", re.escape(r)) + "$") for r in found]


def readme_http_paths() -> Iterator[tuple[int, str]]:
    for item in items(README):
        if item.kind != "span":
            continue
        text = re.sub(r"^(GET|POST) ", "", item.text)
        url = re.match(r"https?://[^/\s]+(/\S*)", text)
        path = url.group(1) if url else text if text.startswith("/") else None
        if path is None or " " in path:
            continue
        path = path.split("?")[0]
        if path.split("/")[1] not in _FS_ROOTS:
            yield item.line, path


def test_every_http_path_the_readme_names_is_served() -> None:
    known = routes()
    paths = list(readme_http_paths())
    assert {"/health", "/metrics", "/agent/{ext}", "/report"} <= {p for _, p in paths}
    bad = [f"README.md:{n}: {p}" for n, p in paths if not any(r.match(p) for r in known)]
    assert bad == []


# --- the AMI account -----------------------------------------------------------------------


def _grants(text: str) -> dict[str, str]:
    return dict(re.findall(r"^(read|write) = ([a-z,]+)\b", text, re.MULTILINE))


def test_the_manager_conf_stanza_grants_what_docs_ami_md_explains() -> None:
    """The README's stanza against docs/ami.md's grants, which tests/test_listener_docs.py
    checks against the events the tracker reads (the code exposes no constant for them)."""
    readme = README.read_text(encoding="utf-8")
    grants = _grants(readme)
    assert set(grants) == {"read", "write"}
    assert grants == _grants((ROOT / "docs" / "ami.md").read_text(encoding="utf-8"))
    assert re.search(r"^timestampevents = yes", readme, re.MULTILINE)


# --- links ---------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_to_files_and_headings_that_exist(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        assert dest.exists(), f"{doc.name}: link to {target}: no such file"
        if anchor:
            headings = [
                _slug(line)
                for line in re.sub(
                    r"```.*?```", "", dest.read_text(encoding="utf-8"), flags=re.DOTALL
                ).splitlines()
                if line.startswith("#")
            ]
            assert anchor in headings, f"{doc.name}: link to {target}: no such heading"
