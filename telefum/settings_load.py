"""Reading ``settings.toml`` into :class:`telefum.config.Settings`: file, environment, errors.

1. The file, by ``tomllib`` (unreadable, not UTF-8, invalid TOML: one line).
2. ``TELEFUM_<SECTION>__<KEY>`` variables, by pydantic-settings' ``EnvSettingsSource``
   (nested delimiter ``__``, each value turned into its key's type; lists also as
   ``a,b,c``). What the library cannot address is done here: ``[[ami]]`` entries by name
   (``TELEFUM_AMI__OFFICE__SECRET``, or ``TELEFUM_AMI__SECRET`` when there is one), a
   section only the environment writes starts from its defaults, ``[ami.crm]`` takes what it
   does not say from ``[crm]`` (except the agents), and a ``TELEFUM_`` variable that reaches
   no key is an error (a section) or a warning (one word: it may be someone else's).
3. pydantic validates; its first error becomes :class:`ConfigError`: the dotted key as the
   file writes it, the variable it came from, what was expected, what was got.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, SettingsError

from telefum.config import CONFIG_ENV, AmiSettings, ConfigError, Settings

PREFIX = "TELEFUM_"
DELIMITER = "__"
# read by other parts of telefum (or docker compose), not settings keys
OTHER_VARIABLES = frozenset({
    CONFIG_ENV, "TELEFUM_AGENT_TOKEN", "TELEFUM_AGENT_EXTENSION", "TELEFUM_AGENT_FILE",
    "TELEFUM_BRIDGE_URL", "TELEFUM_ENV_FILE",
})  # fmt: skip

Loc = tuple[str | int, ...]


def load(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    if path is None and environ.get(CONFIG_ENV):
        path = environ[CONFIG_ENV]
    file = "(embedded defaults)" if path is None else str(path)
    doc = {} if path is None else _read_toml(Path(path), file)
    listed = isinstance(doc.get("ami"), list)  # [[ami]] entries: errors name them
    if listed and not doc["ami"]:
        raise ConfigError(file, "ami", "expected at least one [[ami]] entry")
    for i, entry in enumerate(doc["ami"] if listed and len(doc["ami"]) > 1 else []):
        if isinstance(entry, dict) and "name" not in entry:
            raise ConfigError(file, f"ami[{i}].name", "missing (every [[ami]] needs a name)")
    env = _Environment(file, environ)
    env.apply(doc)
    problem: tuple[Loc, str] | None = None
    try:
        settings = Settings.model_validate(doc)
    except pydantic.ValidationError as err:
        first = err.errors(include_url=False)[0]
        problem = first["loc"], _problem(first, env.origin, _env_name(first["loc"], doc, listed))
    if problem is None:
        problem = next(_cross_checks(settings), None)
    if problem is not None:
        loc, text = problem
        raise ConfigError(file, _dotted(loc, doc, listed, env.origin), text)
    settings._file = None if path is None else Path(path)
    settings._env = tuple(sorted(set(env.origin.values())))
    settings._env_warnings = tuple(env.warnings)
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
        self.names = {k.lower(): k for k in ours}
        self.source = _Source(Settings, case_sensitive=False)
        self.source.env_vars = {low: environ[name] for low, name in self.names.items()}
        self.origin: dict[Loc, str] = {}  # key, as pydantic locates it -> variable
        self.warnings: list[str] = []

    def apply(self, doc: dict[str, Any]) -> None:
        self._check_names()
        try:
            values = self.source()
        except SettingsError as err:
            raise ConfigError(self.file, None, f"environment: {err}") from None
        for section, value in values.items():
            if section == "ami":
                continue
            if section not in doc and isinstance(value, dict):  # env alone: from defaults
                doc[section] = _dump(_default(section))
            doc[section] = _merge(doc[section], value) if isinstance(value, dict) else value
        self._apply_ami(doc, values.get("ami"))

    def _check_names(self) -> None:
        known = _env_names()
        for low, name in sorted(self.names.items()):
            parts = low[len(PREFIX) :].split(DELIMITER)
            if len(parts) == 1:
                if parts[0] in Settings.model_fields:
                    self.origin[(parts[0],)] = name
                    continue
                guess = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
                hint = f' (did you mean "{guess[0]}"?)' if guess else ""
                self.warnings.append(f"environment variable {name} is not a setting{hint}")
            elif not all(parts):
                raise ConfigError(self.file, None, f"environment variable {name}: empty key part")
            elif parts[0] not in Settings.model_fields:
                raise ConfigError(self.file, f"{parts[0]} (from {name})", _unknown(
                    parts[0], list(Settings.model_fields), "section"))  # fmt: skip
            elif parts[0] != "ami":
                self.origin[tuple(parts)] = name

    def _apply_ami(self, doc: dict[str, Any], values: dict[str, Any] | None) -> None:
        """``[ami]`` becomes a list of entries; the variables reach them by name."""
        raw = doc.get("ami")
        entries: list[Any] = raw if isinstance(raw, list) else [raw] if raw is not None else []
        if values and not entries:
            entries = [_dump(_default("ami")[0])]
        if entries:
            doc["ami"] = entries
        names = [str(e.get("name", "")).lower() if isinstance(e, dict) else "" for e in entries]
        for low, name in sorted(self.names.items()):
            parts = low[len(PREFIX) :].split(DELIMITER)
            if parts[0] != "ami" or len(parts) < 2:
                continue
            if len(parts) > 2 and parts[1] in names:
                i, rest = names.index(parts[1]), parts[2:]
                field = FieldInfo.from_annotation(AmiSettings)
                field_name = f"ami{DELIMITER}{parts[1]}"
            elif len(entries) == 1:
                i, rest = 0, parts[1:]
                field, field_name = Settings.model_fields["ami"], "ami"
            else:
                rest_env = DELIMITER.join(parts[1:]).upper()
                raise ConfigError(self.file, "ami", f"{name} is ambiguous with several [[ami]] "
                                  f"entries: use TELEFUM_AMI__<NAME>__{rest_env}")  # fmt: skip
            one = {low: self.source.env_vars[low]}  # the library types the value by its key
            if isinstance(entries[i], dict):
                value = self.source.explode_env_vars(field_name, field, one)
                entries[i] = _merge(entries[i], value)
            self.origin[("ami", i, *rest)] = name
        crm = {k: v for k, v in doc.get("crm", {}).items() if k != "agents"}
        for i, entry in enumerate(entries):
            own = entry.get("crm") if isinstance(entry, dict) else None
            if isinstance(own, dict):  # [ami.crm]: what it does not say comes from [crm]
                entry["crm"] = crm | own
                for k in crm.keys() - own.keys():
                    if ("crm", k) in self.origin:
                        self.origin[("ami", i, "crm", k)] = self.origin[("crm", k)]


def _merge(base: Any, extra: dict[str, Any]) -> Any:
    if not isinstance(base, dict):
        return base  # the file has a value where the variable wants a table: pydantic says so
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and k in out else v
    return out


def _default(section: str) -> Any:
    return Settings.model_fields[section].get_default(call_default_factory=True)


def _dump(section: Any) -> Any:
    return pydantic.TypeAdapter(type(section)).dump_python(section)


def _env_names() -> list[str]:
    """Every ``TELEFUM_<SECTION>__<KEY>`` there is, for did-you-mean."""
    out = []
    for name, field in Settings.model_fields.items():
        tp = _unwrap(field.annotation)
        keys = getattr(tp, "__pydantic_fields__", {})
        out += [f"{PREFIX}{name}{DELIMITER}{k}".upper() for k in keys] or [PREFIX + name.upper()]
    return out


# --- errors ---------------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> X; ``tuple[X, ...]`` -> X; ``dict[str, X]`` -> X."""
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    return _unwrap(args[-1]) if args and typing.get_origin(tp) is not typing.Annotated else tp


def _keys_at(loc: Loc) -> list[str]:
    """The keys the table at ``loc`` may have."""
    tp: Any = Settings
    for part in loc:
        fields = getattr(tp, "__pydantic_fields__", None) or getattr(tp, "model_fields", {})
        if isinstance(part, str) and part in fields:
            tp = _unwrap(fields[part].annotation)
    fields = getattr(tp, "__pydantic_fields__", None) or getattr(tp, "model_fields", {})
    return list(fields)


def _unknown(key: str, known: list[str], what: str = "key") -> str:
    guess = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f' (did you mean "{guess[0]}"?)' if guess else f" (known: {', '.join(known)})"
    return f"unknown {what}{hint}"


_EXPECTED = {
    "string": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
    "tuple": "a list", "list": "a list", "dict": "a table", "dataclass": "a table",
    "model": "a table",
}  # fmt: skip


def _problem(error: Any, origin: Mapping[Loc, str], env: str) -> str:
    """pydantic's error -> "expected ..., got ..." in the words of the file."""
    kind, loc, value, ctx = error["type"], error["loc"], error.get("input"), error.get("ctx") or {}
    from_env = loc in origin
    if kind == "missing":
        return f"missing (write it in the file, or set {env})"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        what = "section" if len(loc) == 1 and isinstance(value, dict) else "key"
        return _unknown(str(loc[-1]), _keys_at(loc[:-1]), what)
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("enum", "literal_error"):
        choices = ", ".join(f'"{c}"' for c in re.findall(r"'([^']*)'", ctx["expected"]))
        return f"expected one of {choices}, got {_got(value, from_env=isinstance(value, str))}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"greater_than_equal": "at least", "greater_than": "more than"}.get(kind, "at most")
        limit = next(iter(ctx.values()))
        return f"expected a number {bound} {limit:g}, got {_got(value, from_env)}"
    if kind in ("string_too_short", "too_short"):
        return f"expected a non-empty value, got {_got(value, from_env)}"
    expected = next((v for k, v in _EXPECTED.items() if kind.startswith(k)), None)
    if expected is None:
        return f"{error['msg']}, got {_got(value, from_env)}"
    return f"expected {expected}, got {_got(value, from_env)}"


def _got(value: Any, from_env: bool = False) -> str:
    if from_env and isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, str):
        return f'"{value}" (a string)'
    if isinstance(value, int | float):
        return f"{value} (a number)"
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a table"
    return type(value).__name__


def _env_name(loc: Loc, doc: dict[str, Any], listed: bool) -> str:
    """The variable that sets the key at ``loc`` (a PBX of several: by its name)."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if listed and len(loc) > 1 and isinstance(loc[1], int) and len(doc["ami"]) > 1:
        parts.insert(1, str(doc["ami"][loc[1]].get("name", "<NAME>")))
    return PREFIX + DELIMITER.join(parts).upper()


def _dotted(loc: Loc, doc: dict[str, Any], listed: bool, origin: Mapping[Loc, str]) -> str:
    """``("ami", 1, "host")`` -> ``ami[branch].host`` (or ``ami.host`` for a lone [ami]),
    plus ``(from TELEFUM_...)`` when the value came from the environment."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if i == 1 and loc[0] == "ami":
                if listed:
                    entry = doc["ami"][part]
                    name = entry.get("name") if isinstance(entry, dict) else None
                    parts[-1] += f"[{name}]" if isinstance(name, str) and name else f"[{part}]"
            else:
                parts[-1] += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part) and not part.isdigit():
            parts.append(part)
        else:
            parts.append(f'"{part}"')
    env = origin.get(loc)
    return ".".join(parts) + (f" (from {env})" if env else "")


def _cross_checks(s: Settings) -> Any:
    """What spans sections or entries: (loc, problem) of each thing wrong."""
    names = [a.name for a in s.ami]
    for i, name in enumerate(names):
        if name in names[:i]:
            yield ("ami", i, "name"), f'expected a unique name, "{name}" is twice'
    if s.originate.pbx and s.originate.pbx not in names:
        yield ("originate", "pbx"), (
            f"expected empty or the name of an [[ami]] entry ({', '.join(sorted(names))}), "
            f'got "{s.originate.pbx}"')  # fmt: skip
    ext = s.calls.extension_re
    crms = [(("crm",), s.crm)] + [(("ami", i, "crm"), a.crm) for i, a in enumerate(s.ami) if a.crm]
    for loc, target in crms:
        for key in target.agents:
            if not ext.fullmatch(key):
                yield (*loc, "agents", key), f"expected an extension matching {ext.pattern}"
    for key in s.http.agent_tokens:
        if not ext.fullmatch(key):
            yield ("http", "agent_tokens", key), f"expected an extension matching {ext.pattern}"
