"""Reading ``settings.toml`` into :class:`telefum.config.Settings`: file, environment, errors.

1. The file, by ``tomllib`` (unreadable, not UTF-8, invalid TOML: one line).
2. ``TELEFUM_<SECTION>__<KEY>`` variables, by pydantic-settings' ``EnvSettingsSource``
   (nested delimiter ``__``; each value turned into its key's type; a list also as
   ``a,b,c``). What the library cannot address is done here: ``[[ami]]`` entries by name
   (``TELEFUM_AMI__OFFICE__SECRET``, or ``TELEFUM_AMI__SECRET`` when there is one PBX); a
   section only the environment writes starts from its defaults; ``[ami.crm]`` takes what it
   does not say from ``[crm]``, except the agents; a variable naming no section is an error,
   a one-word one that is no key a warning (it may be another tool's).
3. pydantic validates, then the checks that span sections; the first problem becomes a
   :class:`ConfigError`: the key as the file writes it, the variable it came from, what was
   expected, what was got.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pydantic
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, SettingsError

from crm_client.redact import register_secrets
from telefum.config import CONFIG_ENV, AmiSettings, ConfigError, Settings

PREFIX, DELIMITER = "TELEFUM_", "__"
# read by other parts of telefum (or by docker compose): not settings, not warned about
OTHER_VARIABLES = frozenset(
    {
        CONFIG_ENV,
        "TELEFUM_AGENT_TOKEN",
        "TELEFUM_AGENT_EXTENSION",
        "TELEFUM_AGENT_FILE",
        "TELEFUM_BRIDGE_URL",
        "TELEFUM_ENV_FILE",
    }
)

Loc = tuple[str | int, ...]  # a key as pydantic locates it: ("ami", 0, "port")


def load(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """``telefum.config.load_settings_from``: the settings, or :class:`ConfigError`."""
    if path is None and environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
    file = "(embedded defaults)" if path is None else str(path)
    doc = {} if path is None else _read_toml(Path(path), file)
    listed = isinstance(doc.get("ami"), list)  # [[ami]] entries: errors name them
    for i, entry in enumerate(doc["ami"] if listed else []):
        if isinstance(entry, dict) and "name" not in entry and len(doc["ami"]) > 1:
            raise ConfigError(file, f"ami[{i}].name", "missing (every [[ami]] needs a name)")
    env = _Environment(file, environ)
    env.apply(doc)
    try:
        settings = Settings.model_validate(doc)
        problem = next(_cross_checks(settings), None)
    except pydantic.ValidationError as err:
        first = err.errors(include_url=False)[0]
        problem = first["loc"], _problem(first, bool(env.of(first["loc"])), _env_of(first, doc))
    if problem is not None:
        loc, text = problem
        raise ConfigError(file, _dotted(loc, doc, listed, env.of(loc)), text)
    settings._file = None if path is None else Path(path)
    settings._env = tuple(sorted(set(env.origin.values())))
    settings._env_warnings = tuple(env.warnings)
    register_secrets(settings.secret_values())  # masked by value wherever text is shown
    return settings


def _read_toml(path: Path, file: str) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, None, "cannot read the file: it does not exist") from None
    except IsADirectoryError:
        raise ConfigError(file, None, "cannot read the file: it is a directory") from None
    except OSError as err:
        raise ConfigError(file, None, f"cannot read the file: {err.strerror or err}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(file, None, f"invalid TOML: not UTF-8 (at line {line})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(file, None, f"invalid TOML: {err}") from None


# --- the environment ------------------------------------------------------------------------


class _Source(EnvSettingsSource):
    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """A list may also be written ``a,b,c`` (JSON ``["a", "b"]`` works too)."""
        if isinstance(value, str) and not value.lstrip().startswith(("[", "{")):
            return [part.strip() for part in value.split(",") if part.strip()]
        return super().decode_complex_value(field_name, field, value)


class _Environment:
    """The ``TELEFUM_`` variables of one environment, applied to a parsed file."""

    def __init__(self, file: str, environ: Mapping[str, str]) -> None:
        self.file = file
        ours = [k for k in environ if k.upper().startswith(PREFIX) and k not in OTHER_VARIABLES]
        self.names = {k.lower(): k for k in sorted(ours)}  # as the library keys them
        self.source = _Source(Settings, case_sensitive=False)
        self.source.env_vars = {low: environ[name] for low, name in self.names.items()}
        self.origin: dict[Loc, str] = {}  # key -> the variable that set it
        self.warnings: list[str] = []

    def of(self, loc: Loc) -> str | None:
        """The variable that set the key at ``loc`` (or the list it is an item of)."""
        while loc and isinstance(loc[-1], int) and loc not in self.origin:
            loc = loc[:-1]
        return self.origin.get(loc)

    def apply(self, doc: dict[str, Any]) -> None:
        ami = self._sort_out()
        try:
            values = self.source()
        except SettingsError as err:
            raise ConfigError(self.file, None, f"environment: {err}") from None
        values.pop("ami", None)  # the library takes [[ami]] for one table: see _apply_ami
        for section, value in values.items():
            if isinstance(value, dict):
                if section not in doc:  # the environment alone: the section's defaults first
                    doc[section] = _dump(Settings.model_fields[section].get_default())
                value = _merge(doc[section], value)
            doc[section] = value
        self._apply_ami(doc, ami)

    def _sort_out(self) -> list[tuple[str, list[str]]]:
        """Origins of the plain variables; warnings and errors for the others; returns the
        ``TELEFUM_AMI__...`` ones as (lower-case name, key parts)."""
        ami = []
        for low, name in self.names.items():
            parts = low.removeprefix(PREFIX.lower()).split(DELIMITER)
            if not all(parts):
                raise ConfigError(self.file, None, f"environment variable {name}: empty key part")
            if parts[0] not in Settings.model_fields:
                if len(parts) > 1:
                    known = list(Settings.model_fields)
                    raise ConfigError(
                        self.file, f"{parts[0]} (from {name})", _unknown(parts[0], known, "section")
                    )
                guess = difflib.get_close_matches(name.upper(), _variables(), n=1, cutoff=0.6)
                hint = f' (did you mean "{guess[0]}"?)' if guess else ""
                self.warnings.append(f"environment variable {name} is not a setting{hint}")
            elif parts == ["ami"]:  # reaches nothing: the library cannot set [[ami]] whole
                self.warnings.append(
                    f"environment variable {name} is not a setting "
                    '(did you mean "TELEFUM_AMI__<KEY>"?)'
                )
            elif parts[0] == "ami":
                ami.append((low, parts[1:]))
            else:
                self.origin[tuple(parts)] = name
        return ami

    def _apply_ami(self, doc: dict[str, Any], variables: list[tuple[str, list[str]]]) -> None:
        """``[ami]`` becomes a list of entries, which the variables reach by name."""
        raw = doc.get("ami")
        entries = raw if isinstance(raw, list) else [raw] if raw is not None else []
        if variables and not entries:
            entries = [_dump(Settings.model_fields["ami"].get_default()[0])]
        if entries:
            doc["ami"] = entries
        names = [str(e.get("name", "")).lower() if isinstance(e, dict) else "" for e in entries]
        for low, parts in variables:
            if len(parts) > 1 and parts[0] in names:
                i, rest, prefix = names.index(parts[0]), parts[1:], f"ami{DELIMITER}{parts[0]}"
            elif len(entries) == 1:
                i, rest, prefix = 0, parts, "ami"
            else:
                raise ConfigError(
                    self.file,
                    "ami",
                    (
                        f"{self.names[low]} is ambiguous with several [[ami]] entries: "
                        f"use TELEFUM_AMI__<NAME>__{DELIMITER.join(parts).upper()}"
                    ),
                )
            # the library types the value by its key in AmiSettings
            field = FieldInfo.from_annotation(AmiSettings)
            value = self.source.explode_env_vars(prefix, field, {low: self.source.env_vars[low]})
            entries[i] = _merge(entries[i], value)
            self.origin[("ami", i, *rest)] = self.names[low]
        for section in ("crm", "backfill"):  # [ami.crm], [ami.backfill]
            table = doc[section] if isinstance(doc.get(section), dict) else {}
            inherited = {k: v for k, v in table.items() if k != "agents"}
            for i, entry in enumerate(entries):
                own = entry.get(section) if isinstance(entry, dict) else None
                if isinstance(own, dict):  # what it does not say comes from the global one
                    entry[section] = inherited | own
                    for k in inherited.keys() - own.keys():
                        if (section, k) in self.origin:
                            self.origin[("ami", i, section, k)] = self.origin[(section, k)]


def _merge(base: Any, extra: dict[str, Any]) -> Any:
    """``extra`` over ``base``, table by table (a value where a table is wanted: as it is,
    for pydantic to refuse)."""
    if not isinstance(base, dict):
        return base
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and k in out else v
    return out


def _dump(section: Any) -> Any:
    return pydantic.TypeAdapter(type(section)).dump_python(section)


def _variables() -> list[str]:
    """Every ``TELEFUM_<SECTION>__<KEY>``, for did-you-mean."""
    out = []
    for name, field in Settings.model_fields.items():
        keys = _fields(_unwrap(field.annotation))
        out += [f"{PREFIX}{name}{DELIMITER}{k}".upper() for k in keys] or [PREFIX + name.upper()]
    return out


# --- errors ---------------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """``X | None``, ``tuple[X, ...]``, ``dict[str, X]`` -> X."""
    args = [a for a in typing.get_args(tp) if a not in (type(None), Ellipsis)]
    return _unwrap(args[-1]) if args and typing.get_origin(tp) is not typing.Annotated else tp


def _fields(tp: Any) -> dict[str, FieldInfo]:
    return dict(getattr(tp, "__pydantic_fields__", None) or {})


def _field_at(loc: Loc) -> tuple[dict[str, FieldInfo], FieldInfo | None]:
    """The keys of the table holding ``loc``, and the key's own field when there is one."""
    tp: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, str) and part in _fields(tp):
            tp = _unwrap(_fields(tp)[part].annotation)
    fields = _fields(tp)
    return fields, fields.get(str(loc[-1])) if loc else None


def _unknown(key: str, known: list[str], what: str = "key") -> str:
    guess = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f' (did you mean "{guess[0]}"?)' if guess else f" (known: {', '.join(known)})"
    return f"unknown {what}{hint}"


_EXPECTED = {  # pydantic's error type, by its start -> what the key wanted
    "string": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "tuple": "a list",
    "list": "a list",
    "dict": "a table",
    "dataclass": "a table",
    "model": "a table",
}
_TYPES: dict[Any, str] = {
    str: "a string",
    SecretStr: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}
_BOUNDS = {
    "greater_than_equal": "at least",
    "greater_than": "more than",
    "less_than_equal": "at most",
    "less_than": "less than",
}


def _problem(error: Any, from_env: bool, env: str) -> str:
    """pydantic's error -> "expected ..., got ..." in the words of the file."""
    kind, loc, value, ctx = error["type"], error["loc"], error.get("input"), error.get("ctx") or {}
    got = _got(value, from_env)
    if kind == "missing":
        field = _field_at(loc)[1]
        expected = _TYPES.get(_unwrap(field.annotation) if field else None, "a table")
        return f"missing: expected {expected} (write it in the file, or set {env})"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        what = "section" if len(loc) == 1 and isinstance(value, dict) else "key"
        return _unknown(str(loc[-1]), list(_field_at(loc)[0]), what)
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("enum", "literal_error"):
        choices = ", ".join(f'"{c}"' for c in re.findall(r"'([^']*)'", ctx["expected"]))
        return f"expected one of {choices}, got {_got(value, isinstance(value, str))}"
    if kind in _BOUNDS:
        return f"expected a number {_BOUNDS[kind]} {next(iter(ctx.values())):g}, got {value}"
    if kind == "string_too_short":
        return f"expected a non-empty string, got {got}"
    wanted = next((v for k, v in _EXPECTED.items() if kind.startswith(k)), None)
    return f"expected {wanted}, got {got}" if wanted else f"{error['msg']}, got {got}"


def _got(value: Any, from_env: bool = False) -> str:
    if isinstance(value, str):
        return f'"{value}"' if from_env else f'"{value}" (a string)'
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, int | float):
        return f"{value} (a number)"
    shown: dict[Any, str] = {list: "a list", dict: "a table"}
    return shown.get(type(value), type(value).__name__)


def _env_of(error: Any, doc: dict[str, Any]) -> str:
    """The variable that sets the key at the error (a PBX of several: by its name)."""
    loc, parts = error["loc"], [str(p) for p in error["loc"] if not isinstance(p, int)]
    entries = doc.get("ami") if loc[0] == "ami" else None
    if isinstance(entries, list) and len(entries) > 1 and len(loc) > 1:
        entry = entries[loc[1]] if isinstance(loc[1], int) else {}
        parts.insert(1, str(entry.get("name", "<NAME>")) if isinstance(entry, dict) else "<NAME>")
    return PREFIX + DELIMITER.join(parts).upper()


def _dotted(loc: Loc, doc: dict[str, Any], listed: bool, env: str | None) -> str:
    """``("ami", 1, "host")`` -> ``ami[branch].host`` when the file has [[ami]] entries,
    ``ami.host`` for a lone [ami]; ``(from TELEFUM_...)`` when the value came from the
    environment."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i == 1 and loc[0] == "ami":
            entry = doc["ami"][part]
            name = entry.get("name") if isinstance(entry, dict) else None
            parts[-1] += "" if not listed else f"[{name}]" if name else f"[{part}]"
        elif isinstance(part, int):
            parts[-1] += f"[{part}]"
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", part) and not re.fullmatch("[0-9]+", part)
            parts.append(part if bare else f'"{part}"')
    return ".".join(parts) + (f" (from {env})" if env else "")


def _cross_checks(s: Settings) -> Iterator[tuple[Loc, str]]:
    """What spans sections or entries: (key, problem) of each thing wrong."""
    names = [a.name for a in s.ami]
    for i, name in enumerate(names):
        if name in names[:i]:
            yield ("ami", i, "name"), f'expected a unique name, "{name}" is twice'
    if s.originate.pbx and s.originate.pbx not in names:
        yield (
            ("originate", "pbx"),
            (
                f"expected empty or the name of an [[ami]] entry ({', '.join(sorted(names))}), "
                f'got "{s.originate.pbx}"'
            ),
        )
    ext = s.calls.extension_re
    keyed: list[tuple[Loc, Mapping[str, Any]]] = [(("crm", "agents"), s.crm.agents)]
    keyed += [(("ami", i, "crm", "agents"), a.crm.agents) for i, a in enumerate(s.ami) if a.crm]
    keyed += [(("http", "agent_tokens"), s.http.agent_tokens)]
    for loc, table in keyed:
        for key in table:
            if not ext.fullmatch(key):
                yield (*loc, key), f"expected an extension matching {ext.pattern}"
