"""Deployment files, checked without a Docker engine: docker-compose.yml, the Dockerfile
and the systemd units run commands the CLI really has, with health checks, scalable
workers, persistent Redis, loopback-only ports and no root."""

from __future__ import annotations

import asyncio
import functools
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from telefum.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
TELEFUM_SERVICES = [name for name, s in SERVICES.items() if s.get("command", [""])[0] == "telefum"]


def argv_of(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def parse(argv: list[str]) -> None:
    """Parse with the real CLI parser (argparse exits on an unknown option)."""
    assert argv[0] == "telefum"
    build_parser(argv[1:]).parse_args(argv[1:])


def test_the_services_of_the_design_are_there() -> None:
    assert {"redis", "listener", "worker"} <= set(SERVICES)
    assert {"refcrm", "pbx-sim"} <= set(SERVICES)
    assert {"listener-b", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(
        SERVICES
    )


@pytest.mark.parametrize("name", TELEFUM_SERVICES)
def test_every_command_is_a_cli_command_with_options_it_accepts(name: str) -> None:
    argv = argv_of(SERVICES[name])
    assert argv[1] in COMMANDS, f"{name}: telefum {argv[1]} is not a command"
    parse(argv)


def test_listener_and_worker_run_the_listen_and_worker_commands() -> None:
    assert argv_of(SERVICES["listener"])[:2] == ["telefum", "listen"]
    assert argv_of(SERVICES["worker"])[:2] == ["telefum", "worker"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check(name: str) -> None:
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] == "CMD" and len(test) > 1


def test_health_checks_need_no_curl() -> None:
    for name in TELEFUM_SERVICES:
        test = SERVICES[name]["healthcheck"]["test"]
        assert "curl" not in test and "wget" not in test, name
        if test[1] == "telefum":
            parse(test[1:])


def test_listener_health_check_asks_health_on_the_port_it_listens_on() -> None:
    listener = SERVICES["listener"]
    listen = listener["environment"]["TELEFUM_HTTP__LISTEN"]
    port = listen.rsplit(":", 1)[1]
    script = listener["healthcheck"]["test"][-1]
    assert f"http://127.0.0.1:{port}/health" in script
    compile(script, "healthcheck", "exec")  # it is valid Python


def test_workers_scale_no_fixed_name_no_published_port() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_published_ports_are_on_the_hosts_loopback_only() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to the network"


def redis_server_argv(name: str = "redis") -> list[str]:
    """The redis-server command line a Redis service's shell wrapper ends in."""
    script = argv_of(SERVICES[name])[-1]
    words = shlex.split(script)
    return words[words.index("redis-server") :]


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = SERVICES["redis"]
    argv = redis_server_argv()
    assert argv[argv.index("--appendonly") + 1] == "yes"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in COMPOSE["volumes"]


def test_listener_keeps_its_spool_on_a_volume() -> None:
    listener = SERVICES["listener"]
    spool_dir = listener["environment"]["TELEFUM_SPOOL_DIR"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in listener["volumes"]}
    mount = next(m for m in mounts if spool_dir.startswith(m))
    assert mounts[mount] in COMPOSE["volumes"]


def test_workers_keep_their_outbox_on_a_volume_beside_the_spool() -> None:
    worker = SERVICES["worker"]
    outbox = str(Path(worker["environment"]["TELEFUM_SPOOL_DIR"]).parent / "outbox")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    mount = next(m for m in mounts if outbox.startswith(m))
    assert mounts[mount] in COMPOSE["volumes"]


def test_the_worker_unit_keeps_its_outbox_in_its_state_directory() -> None:
    text = (ROOT / "deploy" / "telefum-worker@.service").read_text().splitlines()
    assert "StateDirectory=telefum" in text
    assert "Environment=TELEFUM_SPOOL_DIR=/var/lib/telefum/spool" in text


def interpolate(value: str, env: dict[str, str]) -> str:
    """``value`` as compose interpolates it with ``env``: ``${VAR}``, ``${VAR:-default}``,
    ``${VAR:?error}`` (KeyError when VAR is unset or empty), nested in a default, which is
    read only when needed; what a variable holds is taken as it is."""
    out, i = [], 0
    while (start := value.find("${", i)) >= 0:
        out.append(value[i:start])
        depth, end = 1, start + 2
        while depth:
            if value.startswith("${", end):
                depth, end = depth + 1, end + 2
            else:
                depth -= value[end] == "}"
                end += 1
        m = re.fullmatch(r"(\w+)(?::([-?])(.*))?", value[start + 2 : end - 1], re.S)
        assert m is not None, value
        name, op, arg = m[1], m[2], m[3] or ""
        if env.get(name):
            out.append(env[name])
        elif op == "?":
            raise KeyError(f"{name}: {arg}")
        elif op == "-":
            out.append(interpolate(arg, env))
        i = end
    return "".join(out) + value[i:]


def redis_url_of(service: dict[str, Any], env: dict[str, str]) -> str:
    """The service's TELEFUM_REDIS__URL as compose interpolates it with ``env``."""
    return interpolate(service["environment"]["TELEFUM_REDIS__URL"], env)


def test_telefum_services_wait_for_a_healthy_redis_and_share_it() -> None:
    for name in ("listener", "worker"):
        service = SERVICES[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert redis_url_of(service, {"REDIS_PASSWORD": "0123abcd"}) == (
            "redis://:0123abcd@redis:6379/0"
        )
        with pytest.raises(KeyError, match="REDIS_PASSWORD"):  # required: no Redis without it
            redis_url_of(service, {})


def test_the_compose_redis_refuses_clients_without_the_password(tmp_path: Path) -> None:
    """The Redis service's own start script, run here (compose's ``$$`` is ``$``) with this
    machine's redis-server and an entrypoint that runs what it is given on a free port."""
    from tests.conftest import free_port
    from worker.embedded_redis import _ping, find_redis_server

    redis = SERVICES["redis"]
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    script = argv_of(redis)[-1].replace("$$", "$").replace("/tmp/", f"{tmp_path}/")
    assert "--requirepass" not in script  # never on a command line: ps shows it to all
    port, password = free_port(), "0123abcd" * 8
    entry = tmp_path / "bin" / "docker-entrypoint.sh"
    entry.parent.mkdir()
    entry.write_text(
        f'#!/bin/sh\nshift\nexec {find_redis_server()} "$@" --port {port} '
        f"--bind 127.0.0.1 --dir {tmp_path} --daemonize no\n"
    )
    entry.chmod(0o755)
    env = {"PATH": f"{entry.parent}:/usr/bin:/bin", "REDIS_PASSWORD": password}
    server = subprocess.Popen(["sh", "-c", script], env=env)
    try:
        deadline = time.monotonic() + 10
        while not _ping(port, password=password):
            assert server.poll() is None and time.monotonic() < deadline, "Redis did not start"
            time.sleep(0.05)
        assert not _ping(port)
        assert not _ping(port, password="wrong")
        assert stat.S_IMODE((tmp_path / "redis-auth.conf").stat().st_mode) == 0o600
    finally:
        server.terminate()
        server.wait(10)


def local_script(name: str, tmp: Path, swaps: dict[str, str]) -> str:
    """A Redis service's start script as this machine's shell runs it: compose's ``$$``
    is ``$``, its /tmp a folder of the test's, and ``swaps`` (host names, ports) applied."""
    script = argv_of(SERVICES[name])[-1].replace("$$", "$").replace("/tmp/", f"{tmp}/")
    for old, new in swaps.items():
        assert old in script, (name, old)
        script = script.replace(old, new)
    return script


async def test_the_ha_profiles_redis_replica_and_sentinel_share_the_password_and_fail_over(
    tmp_path: Path,
) -> None:
    """The ha profile's own start scripts for ``redis``, ``redis-replica`` and a sentinel,
    run here with this machine's redis-server (host names and ports made local, one sentinel
    with a quorum of 1 and a short down-after): the replica syncs with the password
    (masterauth), the sentinel logs in to both (auth-pass) and promotes the replica when the
    primary is killed, and the bridge's client, asking the sentinel with the password in its
    URL, writes before and after the failover."""
    import redis as redis_sync

    from tests.conftest import free_port
    from worker.embedded_redis import find_redis_server
    from worker.redis_url import connect

    password = "0123abcd" * 8
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(find_redis_server())
    entry = bin_dir / "docker-entrypoint.sh"  # the image's: runs what it is given
    entry.write_text(
        '#!/bin/sh\nshift\nexec redis-server "$@" --port "$PORT" '
        '--bind 127.0.0.1 --dir "$DATA" --daemonize no\n'
    )
    entry.chmod(0o755)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, port: int, swaps: dict[str, str]) -> None:
        (tmp_path / name).mkdir()
        script = local_script(name, tmp_path / name, swaps)
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "REDIS_PASSWORD": password,
            "PORT": str(port),
            "DATA": str(tmp_path / name),
        }
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        procs[name] = subprocess.Popen(["sh", "-c", script], env=env, stdout=log, stderr=log)

    def until(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not check():
            for name, proc in procs.items():
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    def answers(port: int, key: str, want: Callable[[dict[str, Any]], bool]) -> bool:
        client = redis_sync.Redis(port=port, password=password if key else None, socket_timeout=0.5)
        try:
            info = client.info(key) if key else client.sentinel_master("telefum")
            return want(info)
        except redis_sync.RedisError:
            return False
        finally:
            client.close()

    client = None
    try:
        # one after the other, each port taken as it is chosen: a port chosen early could
        # meanwhile be the local end of another one's connection
        primary = free_port()
        start("redis", primary, {"--replica-announce-ip redis": "--replica-announce-ip 127.0.0.1"})
        until(lambda: answers(primary, "server", bool), "the primary never answered")
        replica = free_port()
        start(
            "redis-replica",
            replica,
            {
                "--replicaof redis 6379": f"--replicaof 127.0.0.1 {primary}",
                "--replica-announce-ip redis-replica": "--replica-announce-ip 127.0.0.1",
            },
        )
        until(
            lambda: answers(replica, "replication", lambda i: i.get("master_link_status") == "up"),
            "the replica never logged in to the primary (masterauth)",
        )
        sentinel = free_port()
        start(
            "sentinel-1",
            sentinel,
            {
                "'port 26379'": f"'port {sentinel}' 'bind 127.0.0.1'",
                "monitor telefum redis 6379 2": f"monitor telefum 127.0.0.1 {primary} 1",
                "down-after-milliseconds telefum 5000": "down-after-milliseconds telefum 500",
                "failover-timeout telefum 60000": "failover-timeout telefum 5000",
            },
        )
        until(
            lambda: answers(sentinel, "", lambda m: int(m.get("num-slaves", 0)) >= 1),
            "the sentinel never logged in to the primary (auth-pass)",
        )
        url = f"redis+sentinel://:{password}@127.0.0.1:{sentinel}/telefum/0"
        client = connect(url, socket_connect_timeout=0.5, socket_timeout=1)
        await client.set("before", "1")
        assert await client.execute_command("WAIT", 1, 2000) == 1
        procs["redis"].kill()
        procs["redis"].wait(10)
        deadline = time.monotonic() + 30
        while True:  # the sentinel promotes the replica; the client follows it
            try:
                await client.set("after", "2")
                if (await client.connection_pool.get_master_address())[1] == replica:  # type: ignore[attr-defined]
                    break
            except (redis_sync.ConnectionError, redis_sync.TimeoutError, redis_sync.ResponseError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "sentinel-1.log").read_text()
            await asyncio.sleep(0.2)
        assert await client.get("before") == b"1" and await client.get("after") == b"2"
    finally:
        if client is not None:
            await client.aclose()
        for proc in procs.values():
            proc.kill()
            proc.wait(10)


HA_URL = re.search(r"BRIDGE_REDIS_URL=(\S+)", (ROOT / "docker-compose.yml").read_text())


def test_the_ha_profile_runs_a_second_listener_for_the_same_pbx_with_its_own_spool() -> None:
    a, b = SERVICES["listener"], SERVICES["listener-b"]
    assert b["profiles"] == ["ha"] and argv_of(b) == argv_of(a)
    assert b["environment"] == a["environment"]  # the same settings: the same [[ami]] name
    spools = [{v.split(":")[0] for v in s["volumes"]} & set(COMPOSE["volumes"]) for s in (a, b)]
    assert spools[0] and spools[1] and not spools[0] & spools[1]
    assert b["ports"] != a["ports"] and b["healthcheck"] == a["healthcheck"]


def test_the_ha_profile_puts_redis_behind_three_sentinels_the_bridge_url_names() -> None:
    from worker.redis_url import RedisAddress

    assert HA_URL is not None, "docker-compose.yml shows no BRIDGE_REDIS_URL for the ha profile"
    url = RedisAddress.parse(HA_URL[1])
    assert url.sentinels and url.password == "${REDIS_PASSWORD}"  # the primary's password
    sentinels = [n for n, s in SERVICES.items() if "--sentinel" in " ".join(argv_of(s))]
    assert sorted(h for h, _ in url.sentinels) == sorted(sentinels) and len(sentinels) == 3
    for name in sentinels:
        script = " ".join(argv_of(SERVICES[name]))
        assert f"sentinel monitor {url.primary} redis 6379 2" in script
        assert f'sentinel auth-pass {url.primary} \\"$$REDIS_PASSWORD\\"' in script
        assert SERVICES[name]["profiles"] == ["ha"]
    replica = redis_server_argv("redis-replica")
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis", "6379"]
    assert SERVICES["redis-replica"]["environment"] == SERVICES["redis"]["environment"]
    env = {"BRIDGE_REDIS_URL": HA_URL[1], "REDIS_PASSWORD": "0123abcd"}
    for name in ("listener", "listener-b", "worker"):
        assert redis_url_of(SERVICES[name], env) == HA_URL[1]


def test_the_demo_tools_are_only_in_the_demo_profile() -> None:
    for name in ("refcrm", "pbx-sim"):
        assert SERVICES[name]["profiles"] == ["demo"]
    for name in ("redis", "listener", "worker"):
        assert "profiles" not in SERVICES[name]
    assert {n for n, s in SERVICES.items() if s.get("profiles") == ["ha"]} == {
        "listener-b",
        "redis-replica",
        "sentinel-1",
        "sentinel-2",
        "sentinel-3",
    }


def test_the_demo_env_points_the_bridge_at_the_demo_services() -> None:
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "demo.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    sim, crm = argv_of(SERVICES["pbx-sim"]), argv_of(SERVICES["refcrm"])
    assert env["TELEFUM_AMI__HOST"] == "pbx-sim"
    assert env["TELEFUM_AMI__SECRET"] == sim[sim.index("--secret") + 1]
    assert env["TELEFUM_CRM__URL"] == f"http://refcrm:{crm[crm.index('--port') + 1]}/rest"
    assert f"bridge:{env['TELEFUM_CRM__PASSWORD']}" in crm


# --- Dockerfile -------------------------------------------------------------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_image_is_python_311_slim_installs_the_package_and_runs_as_a_user() -> None:
    lines = [line.strip() for line in DOCKERFILE.splitlines() if line.strip()]
    assert "FROM python:3.11-slim" in lines
    assert re.search(r"^RUN pip install /src", DOCKERFILE, re.M)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    cmd = yaml.safe_load(next(line for line in lines if line.startswith("CMD "))[4:])
    assert cmd[0] == "telefum" and cmd[1] in COMMANDS
    parse(cmd)


def test_docker_build_context_leaves_out_the_virtualenv_and_tests() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# --- systemd units -----------------------------------------------------------------------------

UNITS = sorted((ROOT / "deploy").glob("*.service"))


def test_there_is_a_listener_unit_and_a_worker_template() -> None:
    assert {u.name for u in UNITS} >= {"telefum-bridge.service", "telefum-worker@.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_run_cli_commands_as_an_unprivileged_user(unit: Path) -> None:
    text = unit.read_text()
    fields = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert fields["User"] == "telefum" and fields["NoNewPrivileges"] == "yes"
    for key in ("ExecStart", "ExecStartPre"):
        if key not in fields:
            continue
        argv = shlex.split(fields[key].replace("%H", "host").replace("%i", "1"))
        assert argv[0].endswith("/telefum")
        command = next(a for a in argv[1:] if not a.startswith("-"))
        assert command in COMMANDS
        parse(["telefum", *argv[1:]])


def test_units_documentation_names_files_a_pip_install_creates(tmp_path: Path) -> None:
    """Install as the units' header says (a venv at /opt/telefum, pip install the
    checkout), here under tmp_path: every ``Documentation=`` file must then exist."""
    docs = {
        url
        for unit in UNITS
        for line in unit.read_text().splitlines()
        if line.startswith("Documentation=")
        for url in line.removeprefix("Documentation=").split()
    }
    assert docs, "the units name no documentation"
    assert all(u.startswith("file:///opt/telefum/") for u in docs), docs

    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "tests",
            "bench",
            "build",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
        ),
    )
    venv = tmp_path / "opt-telefum"
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=300)
    made = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(src)])
    assert made.returncode == 0, made.stderr[-3000:]
    [wheel] = tmp_path.glob("telefum_bridge-*.whl")
    venv_made = run([sys.executable, "-m", "venv", str(venv)])
    assert venv_made.returncode == 0, venv_made.stderr
    installed = run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", str(wheel)])
    assert installed.returncode == 0, installed.stderr[-3000:]
    missing = [
        u for u in sorted(docs) if not (venv / u.removeprefix("file:///opt/telefum/")).is_file()
    ]
    assert missing == [], f"a pip install does not create {missing}"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_raise_the_descriptor_limit_and_keep_their_files_private(unit: Path) -> None:
    """1,100 slow HTTP clients exhausted the default 1,024 descriptors; the spool, the
    outbox and the private Redis's files are the service's own. Each directive once: a
    second one would silently win over the first."""
    pairs = [
        line.split("=", 1)
        for line in unit.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    ]
    fields = dict(pairs)
    assert fields["LimitNOFILE"] == "65536" and fields["UMask"] == "0077"
    once = ("LimitNOFILE", "UMask", "StateDirectory", "WorkingDirectory", "User", "ExecStart")
    keys = [k for k, _ in pairs]
    assert {k: keys.count(k) for k in once} == dict.fromkeys(once, 1)
