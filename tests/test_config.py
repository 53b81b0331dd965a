"""settings.toml loading: the documented keys (docs/architecture.md), env overrides, several
PBXs, clear errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from crm_client.types import Credentials
from telefum.commands.config_cmd import settings_to_toml
from telefum.config import ConfigError, Settings, load_settings, load_settings_from

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "settings.toml"
DESIGN = ROOT / "docs" / "architecture.md"  # its settings.toml block: the keys others rely on

MINIMAL = """
[ami]
host = "pbx.local"
username = "telefum"
secret = "ami-secret"

[crm]
url = "https://crm.example.com/rest"
login = "bridge"
password = "crm-secret"
"""


def write(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings_from(write(tmp_path, text), env or {})


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value


# --- the shipped example -------------------------------------------------------------------


def test_shipped_settings_toml_loads_with_the_design_values() -> None:
    s = load_settings_from(SHIPPED, {})
    assert s.ami[0].host == "127.0.0.1" and s.ami[0].port == 5038
    assert s.ami[0].username == "telefum"
    assert s.redis.url.get_secret_value() == ""
    assert s.crm.url == "https://crm.example.com/rest"
    assert s.crm.phone_format == "e164"
    assert s.crm.credentials_for("101") == Credentials("ivan", "change-me")
    assert s.crm.credentials_for("102") == Credentials("bridge", "change-me")
    assert s.calls.inbound_contexts == ("from-trunk", "from-pstn", "from-did-direct", "ext-did")
    assert s.sources == {"+74951234567": "Yandex Direct"}
    assert s.http.listen == "127.0.0.1:8088"


def _design_toml() -> dict:
    text = DESIGN.read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, f"{DESIGN} has no toml block"
    return tomllib.loads(block.group(1))


def test_every_design_key_is_in_the_shipped_example_and_the_design_block_loads(
    tmp_path: Path,
) -> None:
    design = _design_toml()
    shipped = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))

    def keys(doc: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in doc.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    assert keys(design) - keys(shipped) == set()
    block = re.search(r"```toml\n(.*?)```", DESIGN.read_text(encoding="utf-8"), re.S)
    assert block is not None
    s = load(tmp_path, block.group(1))
    assert s.crm.agents["101"] == Credentials("ivan", "change-me")


def test_no_file_gives_the_embedded_defaults() -> None:
    assert load_settings_from(None, {}) == Settings()


def test_telefum_config_env_names_the_file_when_no_path_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    s = load_settings_from(None, {"TELEFUM_CONFIG": str(path)})
    assert s.ami[0].host == "pbx.local" and s.source_file == path


# --- environment overrides -----------------------------------------------------------------


def test_env_overrides_a_secret_from_the_file(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL, {"TELEFUM_CRM__PASSWORD": "from-env"})
    assert s.crm.password.get_secret_value() == "from-env"
    assert s.env_overrides == ("TELEFUM_CRM__PASSWORD",)


def test_a_secret_may_live_only_in_the_environment(tmp_path: Path) -> None:
    text = MINIMAL.replace('password = "crm-secret"\n', "")
    assert "crm.password" in str(error_of(tmp_path, text))
    s = load(tmp_path, text, {"TELEFUM_CRM__PASSWORD": "p"})
    assert s.crm.password.get_secret_value() == "p"


def test_env_values_are_coerced_to_the_key_type(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        MINIMAL,
        {
            "TELEFUM_AMI__PORT": "15038",
            "TELEFUM_CRM__TIMEOUT_S": "2.5",
            "TELEFUM_WORKER__LOG_INTERNAL": "yes",
            "TELEFUM_CALLS__INBOUND_CONTEXTS": "from-trunk, from-sip",
            "TELEFUM_WORKER__CREATE_CONTACTS_FOR": '["in", "out"]',
            "TELEFUM_REDIS__URL": "redis://127.0.0.1:6390/1",
            "TELEFUM_SPOOL_DIR": "/var/lib/telefum/spool",
        },
    )
    assert s.ami[0].port == 15038
    assert s.crm.timeout_s == 2.5
    assert s.worker.log_internal is True
    assert s.calls.inbound_contexts == ("from-trunk", "from-sip")
    assert s.worker.create_contacts_for == ("in", "out")
    assert s.redis.url.get_secret_value() == "redis://127.0.0.1:6390/1"
    assert s.spool_dir == "/var/lib/telefum/spool"


def test_env_override_that_is_not_a_number_names_the_variable(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL, {"TELEFUM_AMI__PORT": "fifty"})
    assert str(err) == (
        f"{tmp_path / 'settings.toml'}: ami.port (from TELEFUM_AMI__PORT): "
        'expected an integer, got "fifty"'
    )


def test_env_override_with_a_typo_is_an_unknown_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL, {"TELEFUM_CRM__PASWORD": "x"})
    assert "crm.pasword (from TELEFUM_CRM__PASWORD): unknown key" in str(err)
    assert 'did you mean "password"' in str(err)


def test_one_word_telefum_variables_that_are_not_keys_are_left_alone(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL, {"TELEFUM_DEMO_SEED": "4", "TELEFUM_CONFIG": "ignored-here"})
    assert s.env_overrides == ()


def test_env_sets_one_agents_password(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        MINIMAL,
        {
            "TELEFUM_CRM__AGENTS__101__LOGIN": "ivan",
            "TELEFUM_CRM__AGENTS__101__PASSWORD": "ivans",
        },
    )
    assert s.crm.credentials_for("101") == Credentials("ivan", "ivans")


def test_env_overrides_apply_to_the_embedded_defaults_too() -> None:
    s = load_settings_from(None, {"TELEFUM_REDIS__URL": "redis://r:6379/0"})
    assert s.redis.url.get_secret_value() == "redis://r:6379/0"
    assert s.crm == Settings().crm  # a section made by the env alone keeps its defaults


# --- several PBXs ----------------------------------------------------------------------------

TWO_PBX = """
[crm]
url = "https://crm.example.com/rest"
login = "bridge"
password = "p"
phone_format = "digits"
[crm.agents."101"]
login = "ivan"
password = "i"

[[ami]]
name = "office"
host = "10.0.0.5"
username = "telefum"
secret = "s1"

[[ami]]
name = "branch"
host = "10.1.0.5"
username = "telefum"
secret = "s2"
[ami.crm]
url = "https://branch.example.com/rest"
password = "b"
"""


def test_two_pbxs_each_with_a_name_and_one_with_its_own_crm(tmp_path: Path) -> None:
    s = load(tmp_path, TWO_PBX)
    assert [a.name for a in s.ami] == ["office", "branch"]
    assert s.crm_for("office") is s.crm
    branch = s.crm_for("branch")
    assert branch.url == "https://branch.example.com/rest"
    assert branch.password.get_secret_value() == "b"
    # what the branch CRM does not say comes from [crm], but not another CRM's agents
    assert branch.login == "bridge" and branch.phone_format == "digits"
    assert branch.credentials_for("101") == Credentials("bridge", "b")


def test_env_override_reaches_one_pbx_by_name(tmp_path: Path) -> None:
    s = load(tmp_path, TWO_PBX, {"TELEFUM_AMI__BRANCH__SECRET": "new"})
    assert s.pbx("branch").secret.get_secret_value() == "new"
    assert s.pbx("office").secret.get_secret_value() == "s1"


def test_env_override_for_ami_is_ambiguous_with_several_pbxs(tmp_path: Path) -> None:
    err = error_of(tmp_path, TWO_PBX, {"TELEFUM_AMI__SECRET": "x"})
    assert "TELEFUM_AMI__<NAME>__SECRET" in str(err)


def test_every_ami_entry_needs_a_unique_name(tmp_path: Path) -> None:
    text = TWO_PBX.replace('name = "branch"', 'name = "office"')
    assert 'expected a unique name, "office"' in str(error_of(tmp_path, text))
    text = TWO_PBX.replace('name = "branch"\n', "")
    assert "ami[1].name: missing" in str(error_of(tmp_path, text))


def test_an_error_inside_a_pbx_entry_names_the_pbx(tmp_path: Path) -> None:
    err = error_of(tmp_path, TWO_PBX.replace('host = "10.1.0.5"', "host = 5"))
    assert "ami[branch].host: expected a string, got 5 (a number)" in str(err)


# --- values normalised or refused ----------------------------------------------------------


def test_source_numbers_are_kept_as_e164_whatever_the_format(tmp_path: Path) -> None:
    sources = '[sources]\n"8 (495) 123-45-67" = "Yandex"\n"74957654321" = "Avito"\n'
    s = load(tmp_path, MINIMAL + sources)
    assert s.sources == {"+74951234567": "Yandex", "+74957654321": "Avito"}


def test_one_number_with_two_labels_is_refused(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL + '[sources]\n"+74951234567" = "A"\n"84951234567" = "B"\n')
    assert 'already labelled "A"' in str(err)


def test_bad_enum_value_lists_the_choices(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL + 'phone_format = "intl"\n')
    assert str(err).endswith(
        'crm.phone_format: expected one of "e164", "digits", "national", got "intl"'
    )


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ('[http]\nlisten = "8088"\n', "http.listen", '"host:port"'),
        ('[redis]\nurl = "http://r"\n', "redis.url", "redis://"),
        ('[calls]\nextension_pattern = "(("\n', "calls.extension_pattern", "regular expression"),
        ("[ami.x]\n", "ami.x", "unknown key"),
        ('[worker]\ncreate_contacts_for = ["inbound"]\n', "worker.create_contacts_for", '"in"'),
        ("[worker]\nmax_jobs = 0\n", "worker.max_jobs", "at least 1"),
        ('[crm.agents."boss"]\nlogin = "a"\npassword = "b"\n', "crm.agents.boss", "extension"),
        ('[crm.agents."101"]\nlogin = "a"\n', 'crm.agents."101".password', "missing"),
        ('[http.agent_tokens]\n"101" = ""\n', 'http.agent_tokens."101"', "non-empty"),
    ],
)
def test_bad_value_names_the_key_and_what_was_expected(
    tmp_path: Path, extra: str, key: str, expected: str
) -> None:
    # appended after MINIMAL, so [crm.agents] etc. land in the right tables
    err = error_of(tmp_path, MINIMAL + extra)
    assert err.key is not None and err.key.startswith(key), str(err)
    assert expected in err.problem
    assert str(err).startswith(str(tmp_path / "settings.toml") + ": ")


def test_a_whole_number_is_accepted_where_a_float_is_expected(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL + "timeout_s = 3\n").crm.timeout_s == 3.0


def test_a_boolean_is_not_taken_for_a_number(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL.replace("[crm]", "[crm]\ntimeout_s = true"))
    assert "crm.timeout_s: expected a number, got true" in str(err)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    text = MINIMAL + "\n[http\n"
    err = error_of(tmp_path, text)
    line = text.count("\n")  # the broken header is the last line
    assert "invalid TOML" in str(err) and f"(at line {line}," in str(err)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_bytes(MINIMAL.encode() + '[sources]\n"+74951234567" = "Яндекс"\n'.encode("cp1251"))
    with pytest.raises(ConfigError, match=r"not UTF-8 \(at line 12\)"):
        load_settings_from(path, {})


# --- secrets never shown ---------------------------------------------------------------------


SECRETS = ("ami-secret", "crm-secret", "agent-secret", "http-token", "agent-token", "redispw")

WITH_SECRETS = (
    MINIMAL
    + """
[crm.agents."101"]
login = "ivan"
password = "agent-secret"

[redis]
url = "redis://:redispw@127.0.0.1:6379/0"

[http]
token = "http-token"
[http.agent_tokens]
"101" = "agent-token"
"""
)


def test_effective_config_masks_every_secret(tmp_path: Path) -> None:
    text = settings_to_toml(load(tmp_path, WITH_SECRETS))
    for secret in SECRETS:
        assert secret not in text
    masked = '"**********"'  # pydantic's SecretStr, as it shows itself
    assert f"password = {masked}" in text and f"secret = {masked}" in text
    assert f"token = {masked}" in text


def test_repr_of_settings_shows_no_secret(tmp_path: Path) -> None:
    text = repr(load(tmp_path, WITH_SECRETS))
    for secret in SECRETS:
        assert secret not in text


def test_unmasked_effective_config_loads_back_to_the_same_settings(tmp_path: Path) -> None:
    original = load(tmp_path, WITH_SECRETS)
    again = load_settings_from(write(tmp_path, settings_to_toml(original, False), "again.toml"), {})
    assert again.model_dump() == original.model_dump()  # every key, secrets by value


def test_unmasked_multi_pbx_config_loads_back_to_the_same_settings(tmp_path: Path) -> None:
    original = load(tmp_path, TWO_PBX)
    again = load_settings_from(write(tmp_path, settings_to_toml(original, False), "again.toml"), {})
    assert again.ami == original.ami and again.crm == original.crm


def test_load_settings_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEFUM_CRM__LOGIN", "from-process-env")
    assert load_settings(write(tmp_path, MINIMAL)).crm.login == "from-process-env"


# --- the shipped example shows the defaults ------------------------------------------------

# Where settings.toml shows something other than the code's default, on purpose.
DOCUMENTED_OVERRIDES = {
    "crm.url": "an example address to replace; the embedded default is a local reference CRM",
    "crm.agents": "an example agent",
    "sources": "an example tracking number",
    "http.agent_tokens": "an example agent token (commented out)",
    "http.allowed_hosts": "an example host name (commented out)",
}


def _section(header: str) -> str:
    """`crm.agents."101"` -> "crm.agents.101" (TOML's own key syntax)."""
    doc, path = tomllib.loads(f"[{header}]\n"), []
    while doc:
        ((key, doc),) = doc.items()
        path.append(key)
    return ".".join(path)


def _shown_values() -> list[tuple[str, object]]:
    """Every `key = value` of settings.toml, written or commented out ("# key = value"),
    with its section; not the commented multi-PBX example (indented further)."""
    shown, section = [], ""
    for line in SHIPPED.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^\[\[?([^\]]+)\]\]?", line):
            section = _section(m.group(1))
            continue
        text = line[2:] if line.startswith("# ") else line
        if not re.match(r'^([a-z_]+|"[^"]+")\s*=', text):
            continue
        ((key, value),) = tomllib.loads(text).items()
        shown.append((f"{section}.{key}" if section else key, value))
    return shown


def _default(dotted: str) -> object:
    value: object = Settings().model_dump()
    for part in dotted.split("."):
        value = value[0] if isinstance(value, tuple) else value  # [ami]: the one PBX
        value = value[part]  # type: ignore[index]
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    return list(value) if isinstance(value, tuple) else value


def test_the_shipped_settings_toml_shows_the_code_defaults_or_a_documented_override() -> None:
    shown = _shown_values()
    assert len(shown) > 50  # every section's keys
    differ = [
        f"{key} = {value!r} (default {_default(key)!r})"
        for key, value in shown
        if not any(key == o or key.startswith(o + ".") for o in DOCUMENTED_OVERRIDES)
        and value != _default(key)
    ]
    assert differ == []
    for override in DOCUMENTED_OVERRIDES:
        assert any(k == override or k.startswith(override + ".") for k, _ in shown), override


# --- settings that reach the code they configure ----------------------------------------------


def test_subject_internal_is_a_worker_setting_and_reaches_the_worker(tmp_path: Path) -> None:
    from telefum.wiring import worker_config

    text = MINIMAL + '[worker]\nlog_internal = true\nsubject_internal = "Между своими"\n'
    config = worker_config(load(tmp_path, text))
    assert config.calls.subject_internal == "Между своими"


def test_the_worker_gets_the_settings_sections_themselves(tmp_path: Path) -> None:
    """One hop: [worker] is the worker's CallPolicy, [crm] its CrmTarget, not copies."""
    from telefum.wiring import worker_config

    s = load(tmp_path, TWO_PBX)
    config = worker_config(s)
    assert config.calls is s.worker and config.crm is s.crm
    assert config.crm_for("branch") is s.pbx("branch").crm
    assert config.job_timeout_s == s.worker.job_timeout_s
    assert config.retry.total_s == s.worker.retry_total_s


# --- values refused that used to pass -------------------------------------------------------


def test_an_empty_ami_host_is_refused(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL.replace('host = "pbx.local"', 'host = ""'))
    assert err.key == "ami.host" and "non-empty" in err.problem


def test_a_crm_url_with_a_fragment_is_refused(tmp_path: Path) -> None:
    """Everything after "#" never reaches the CRM: every find would be an empty query."""
    text = MINIMAL.replace("crm.example.com/rest", "crm.example.com/rest#main")
    err = error_of(tmp_path, text)
    assert err.key == "crm.url" and "#fragment" in err.problem


def test_an_unknown_section_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL, {"TELEFUM_REDDIS__URL": "redis://r:6379/0"})
    assert err.key == "reddis (from TELEFUM_REDDIS__URL)"
    assert 'unknown section (did you mean "redis"?)' in err.problem


# --- warnings: runs, but should not stay so ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "guess"),
    [("TELEFUM_AMI_SECRET", "TELEFUM_AMI__SECRET"), ("TELEFUM_SPOOLDIR", "TELEFUM_SPOOL_DIR")],
)
def test_a_telefum_variable_that_reaches_no_key_is_warned_about(
    tmp_path: Path, name: str, guess: str
) -> None:
    s = load(tmp_path, MINIMAL, {name: "x"})
    assert s.env_overrides == ()
    (warning,) = [w for w in s.warnings() if name in w]
    assert f'did you mean "{guess}"' in warning


def test_variables_other_parts_read_are_not_warned_about(tmp_path: Path) -> None:
    env = {"TELEFUM_CONFIG": "x", "TELEFUM_AGENT_TOKEN": "t", "TELEFUM_BRIDGE_URL": "u"}
    assert [w for w in load(tmp_path, MINIMAL, env).warnings() if "TELEFUM_" in w] == []


def test_the_shipped_placeholder_secrets_are_warned_about() -> None:
    warnings = load_settings_from(SHIPPED, {}).warnings()
    for what in ("ami.secret", "crm.password", 'crm.agents."101".password'):
        assert any(w.startswith(what) and '"change-me"' in w for w in warnings), what


def test_short_tokens_are_warned_about_and_long_ones_are_not(tmp_path: Path) -> None:
    text = MINIMAL + '[http]\ntoken = "t"\nreport_token = "r-0123456789abcdef"\n'
    text += '[http.agent_tokens]\n"101" = "short-101"\n'
    warnings = load(tmp_path, text).warnings()
    assert "http.token has 1 characters: use at least 16" in warnings
    assert 'http.agent_tokens."101" has 9 characters: use at least 16' in warnings
    assert not any("report_token" in w for w in warnings)
    assert not any("change-me" in w for w in warnings)  # MINIMAL has real secrets


def test_the_demo_settings_give_no_warnings(tmp_path: Path) -> None:
    """The demo generates its secrets: none of them may look like a placeholder."""
    from telefum.demo import DemoSecrets, settings_text

    secrets = DemoSecrets.generate()
    text = settings_text(tmp_path, 5038, "http://127.0.0.1:8080/rest", secrets)
    assert load(tmp_path, text).warnings() == []


def test_the_packages_whose_classes_are_sections_do_not_import_the_shell() -> None:
    """[calls], [worker], [crm] are types of telephony/, worker/, crm_client/: they may use
    pydantic, never telefum (nor telephony and crm_client each other)."""
    import ast

    forbidden = {
        "telephony": {"telefum", "worker", "crm_client"},
        "crm_client": {"telefum", "worker", "telephony"},
        "worker": {"telefum"},
    }
    wrong = []
    for package, others in forbidden.items():
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                )
                wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] in others]
    assert wrong == []


# --- [backfill] ----------------------------------------------------------------------------

BACKFILL_TWO_PBX = (
    TWO_PBX
    + """
[ami.backfill]
kind = "mysql"
dsn = "mysql://cdr@10.1.0.5:3306/asteriskcdrdb"

[backfill]
kind = "csv"
path = "/srv/cdr/Master.csv"
timezone = "UTC"
password = "from-global"
settle_s = 2.0
"""
)


def test_backfill_maps_onto_the_cdr_source_and_a_pbx_inherits_what_it_omits(
    tmp_path: Path,
) -> None:
    s = load(tmp_path, BACKFILL_TWO_PBX, {"TELEFUM_AMI__BRANCH__BACKFILL__PASSWORD": "pw"})
    office, branch = s.backfill_for("office"), s.backfill_for("branch")
    assert office is s.backfill and office.source().path == "/srv/cdr/Master.csv"
    src = branch.source()
    assert (src.kind, src.effective_dsn, src.credentials()) == (
        "mysql",
        "mysql://cdr@10.1.0.5:3306/asteriskcdrdb",
        ("cdr", "pw"),
    )
    assert (src.timezone, branch.settle_s) == ("UTC", 2.0)  # from [backfill]
    assert src.describe() == "mysql cdr@10.1.0.5:3306/asteriskcdrdb table cdr"


def test_no_backfill_section_means_no_backfill() -> None:
    assert not Settings().backfill_for("default").enabled


def test_a_backfill_mistake_names_the_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, MINIMAL + '[backfill]\nkind = "mysql"\ndsn = "postgresql://h/db"\n')
    assert str(err).endswith(
        "backfill: dsn: expected mysql:// or mariadb://..., got 'postgresql://h/db'"
    )
    err = error_of(tmp_path, MINIMAL + '[backfill]\nkind = "csv"\ntimezone = "Mars/Base"\n')
    assert "backfill: timezone: unknown time zone 'Mars/Base'" in str(err)
    err = error_of(tmp_path, MINIMAL + '[backfill]\nkind = "sqlite"\n')
    assert "backfill.kind: expected one of" in str(err)


def test_a_backfill_password_is_masked_in_the_dsn_too(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[backfill]\nkind = "postgres"\ndsn = "postgresql://u:dsn-pw@h/db"\npassword = "pw2"\n'
    )
    shown = settings_to_toml(load(tmp_path, text))
    assert "dsn-pw" not in shown and "pw2" not in shown
    assert "postgresql://u:***@h/db" in shown
