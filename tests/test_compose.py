"""The production deployment files hold together: docker-compose.yml, the Dockerfile, the proxy's nginx
config, .env.example and the settings they feed.

`docker compose` is not needed (nor a database): the compose file is parsed with PyYAML and checked
against the repository.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = ROOT / "deploy" / "nginx" / "console.conf"
SETTINGS_FILE = ROOT / "console" / "settings.py"

# The services that run the console's own code (from the image the Dockerfile builds).
CONSOLE_SERVICES = ("migrate", "web", "gateway", "worker", "beat")
ONE_SHOT = {"migrate"}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def instructions(dockerfile_text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in dockerfile_text.splitlines() if not line.lstrip().startswith("#"))
    )
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def command_text(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def build_context(service: dict) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    context = build if isinstance(build, str) else build.get("context", ".")
    return (ROOT / context).resolve()


def build_dockerfile(service: dict) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return build_context(service) / name


def volume_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(type, source, target) for every entry of a service's volumes, short or long syntax."""
    mounts = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            mounts.append((entry.get("type", "volume"), str(entry.get("source", "")), str(entry.get("target", ""))))
            continue
        parts = str(entry).split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        kind = "bind" if source.startswith((".", "/", "~")) else ("volume" if source else "anonymous")
        mounts.append((kind, source, target))
    return mounts


def healthcheck_disabled(service: dict) -> bool:
    check = service.get("healthcheck")
    return isinstance(check, dict) and (check.get("disable") is True or check.get("test") in (["NONE"], "NONE"))


def has_healthcheck(service: dict) -> bool:
    """Its own healthcheck in compose, or the HEALTHCHECK of the Dockerfile it builds, not disabled."""
    if healthcheck_disabled(service):
        return False
    if isinstance(service.get("healthcheck"), dict) and service["healthcheck"].get("test"):
        return True
    dockerfile = build_dockerfile(service)
    return bool(dockerfile and dockerfile.exists() and "HEALTHCHECK" in dict(instructions(dockerfile.read_text())))


def depends_on(service: dict) -> dict[str, str]:
    """Dependency name -> condition (compose's list form means service_started)."""
    dependencies = service.get("depends_on", {})
    if isinstance(dependencies, list):
        return dict.fromkeys(dependencies, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in dependencies.items()}


# --- every service -----------------------------------------------------------------------------


def test_expected_services(services):
    assert set(services) == {"postgres", "redis", "migrate", "web", "gateway", "worker", "beat", "proxy"}


def test_every_service_has_an_image_or_a_build(services):
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"


def test_official_images(services):
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    assert services["proxy"]["image"] == "nginx:1.27"


def test_built_services_have_a_command_or_the_dockerfile_cmd(services, dockerfile):
    built = [name for name, service in services.items() if service.get("build")]
    assert set(CONSOLE_SERVICES) <= set(built)
    for name in built:
        service = services[name]
        dockerfile_path = build_dockerfile(service)
        if not service.get("command"):
            assert "CMD" in dict(instructions(dockerfile_path.read_text())), f"{name}: no command and no CMD"
    assert "daphne" in command_text(services["web"])
    assert "console.asgi:application" in command_text(services["web"])
    assert "celery -A console worker" in command_text(services["worker"])
    assert "uvicorn" in command_text(services["gateway"])
    assert "console.gateway_asgi:application" in command_text(services["gateway"])
    beat = command_text(services["beat"])
    assert "celery -A console beat" in beat
    assert "-s /var/lib/console/celerybeat-schedule" in beat


def test_local_paths_exist(services, compose):
    for name, service in services.items():
        context = build_context(service)
        if context is not None:
            assert context.is_dir(), f"{name}: build context {context} is missing"
            assert build_dockerfile(service).is_file(), f"{name}: {build_dockerfile(service)} is missing"
            assert context == ROOT, f"{name}: builds from {context}, not the repository root"
        for kind, source, _target in volume_mounts(service):
            if kind == "bind":
                assert source.startswith("./"), f"{name}: bind mount of a host path outside the repository: {source}"
                assert (ROOT / source).exists(), f"{name}: bind-mounted {source} is missing from the repository"
            elif kind == "volume":
                assert source in (compose.get("volumes") or {}), f"{name}: volume {source} is not declared"
        for env_file in service.get("env_file", []) if isinstance(service.get("env_file"), list) else []:
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (ROOT / path).exists(), f"{name}: env_file {path} is missing"


def test_depends_on_names_real_services_with_valid_conditions(services):
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert condition in conditions, f"{name}: unknown condition {condition}"
            if condition == "service_healthy":
                assert has_healthcheck(services[dependency]), (
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
                )


def test_no_docker_socket(services, compose_text):
    for name, service in services.items():
        for _kind, source, target in volume_mounts(service):
            assert "docker.sock" not in source and "docker.sock" not in target, f"{name} mounts the Docker socket"
        assert service.get("privileged") is not True, f"{name} is privileged"
        assert service.get("network_mode") != "host", f"{name} uses the host network"
    active = "\n".join(line for line in compose_text.splitlines() if not line.lstrip().startswith("#"))
    assert "docker.sock" not in active


def test_only_the_proxy_publishes_ports(services):
    publishing = sorted(name for name, service in services.items() if service.get("ports"))
    assert publishing == ["proxy"]
    ports = {str(port) for port in services["proxy"]["ports"]}
    assert ports == {"80:80", "443:443"}


def test_every_long_running_service_is_health_checked(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        healthy_dependencies = [dep for dep, cond in depends_on(service).items() if cond == "service_healthy"]
        assert has_healthcheck(service) or healthy_dependencies, f"{name}: no healthcheck and no healthy dependency"
    for name in ("postgres", "redis", "web", "gateway", "worker", "proxy"):
        assert has_healthcheck(services[name]), f"{name} has no healthcheck"


def test_image_healthcheck_only_where_web_runs(services):
    """The image's HEALTHCHECK probes daphne's port: the other console services replace or disable it."""
    for name in CONSOLE_SERVICES:
        if name != "web":
            assert "healthcheck" in services[name], f"{name} would inherit the image's web probe"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])


# --- the individual services ----------------------------------------------------------------------


def test_redis_keeps_every_queued_task(services):
    command = command_text(services["redis"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(target == "/data" for _kind, _source, target in volume_mounts(services["redis"]))


def test_postgres_keeps_its_data(services):
    assert any(target == "/var/lib/postgresql/data" for _k, _s, target in volume_mounts(services["postgres"]))
    env = services["postgres"]["environment"]
    assert env["POSTGRES_USER"] == "console"
    assert env["POSTGRES_DB"] == "console"
    assert env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_migrate_runs_once_before_the_rest(services):
    migrate = services["migrate"]
    command = command_text(migrate)
    assert "python manage.py migrate --noinput" in command
    assert "python manage.py ensure_admin" in command
    assert command.index("migrate --noinput") < command.index("ensure_admin")
    assert migrate.get("restart") == "no"
    assert depends_on(migrate).get("postgres") == "service_healthy"
    for name in ("web", "gateway", "worker", "beat"):
        dependencies = depends_on(services[name])
        assert dependencies.get("migrate") == "service_completed_successfully", name
        assert dependencies.get("redis") == "service_healthy", name
    assert depends_on(services["proxy"]).get("web") == "service_healthy"


def test_console_services_share_one_environment(services):
    """web and worker share one; migrate differs only in connecting as the owner (and knowing the app role's
    password, to create it); beat only in where it exports checkpoints."""
    env = services["web"]["environment"]
    assert services["worker"]["environment"] == env
    assert services["gateway"]["environment"] == env
    migrate = dict(services["migrate"]["environment"])
    assert migrate.pop("DATABASE_URL").startswith("postgres://console:${POSTGRES_PASSWORD")
    assert migrate.pop("DATABASE_APP_PASSWORD").startswith("${DATABASE_APP_PASSWORD:?")
    assert migrate == {key: value for key, value in env.items() if key != "DATABASE_URL"}
    beat = dict(services["beat"]["environment"])
    assert beat.pop("AUDIT_CHECKPOINT_EXPORT_DIR") == "/var/lib/console-audit"
    assert beat == env
    # Issue 12 item 5: the long-running processes are the application role; the owner's password reaches only
    # migrate, and only beat mounts the checkpoint export.
    assert env["DATABASE_URL"].startswith("postgres://console_app:${DATABASE_APP_PASSWORD")
    assert env["DATABASE_URL"].endswith("@postgres:5432/console")
    for name in ("web", "gateway", "worker", "beat"):
        assert "POSTGRES_PASSWORD" not in str(services[name]["environment"]), name
        exports = [t for _k, _s, t in volume_mounts(services[name]) if t == "/var/lib/console-audit"]
        assert bool(exports) == (name == "beat"), name
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert env["SECRETS_ENCRYPTION_KEYS"].startswith("${SECRETS_ENCRYPTION_KEYS:?")
    assert "AUDIT_CHECKPOINT_KEY" in env
    assert env["ALLOWED_HOSTS"].startswith("${CONSOLE_HOSTNAME")
    assert env["CSRF_TRUSTED_ORIGINS"] == "https://${CONSOLE_HOSTNAME}"
    assert env["SECURE_TLS"] == "true"
    assert env["DEBUG"] == "false"
    assert env["DATA_DIR"] == "/var/lib/console"
    assert env["MODEL_STORE"] == "/models"
    assert str(env["TRUSTED_PROXY_COUNT"]) == "1"
    for name in CONSOLE_SERVICES:
        targets = {target for _k, _s, target in volume_mounts(services[name])}
        assert {"/var/lib/console", "/models"} <= targets, f"{name} lacks the data or model volume"


def test_settings_read_every_variable_compose_passes(services):
    settings_text = SETTINGS_FILE.read_text()
    names = set()
    for name in CONSOLE_SERVICES:
        names |= set(services[name]["environment"])
    for variable in sorted(names):
        pattern = rf"env_(?:str|bool|int|list)\(\s*\"{variable}\""
        assert re.search(pattern, settings_text), f"compose passes {variable}, which console/settings.py never reads"


def test_declared_volumes(compose):
    assert {"postgres-data", "redis-data", "console-data", "model-store", "audit-checkpoints"} <= set(
        compose["volumes"]
    )


# --- interpolation and .env.example ---------------------------------------------------------------


def test_every_variable_is_documented_in_env_example(compose_text):
    example = (ROOT / ".env.example").read_text()
    active = "\n".join(line for line in compose_text.splitlines() if not line.lstrip().startswith("#"))
    for match in VARIABLE.finditer(active.replace("$$", "")):
        variable, operator = match.group(1), match.group(2)
        assert re.search(rf"^#?\s*{variable}=", example, re.MULTILINE), f"{variable} is missing from .env.example"
        if operator == ":?":
            assert re.search(rf"^{variable}=", example, re.MULTILINE), f"required {variable} is commented out"
    for secret in (
        "POSTGRES_PASSWORD",
        "DATABASE_APP_PASSWORD",
        "SECRET_KEY",
        "SECRETS_ENCRYPTION_KEYS",
        "AUDIT_CHECKPOINT_KEY",
    ):
        assert re.search(rf"^{secret}=$", example, re.MULTILINE), f".env.example must not ship a value for {secret}"
    assert "Fernet.generate_key()" in example


# --- Dockerfile ------------------------------------------------------------------------------------


def test_dockerfile(dockerfile):
    steps = instructions(dockerfile)
    keywords = [keyword for keyword, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert 'pip install "pip>=25.3"' in dockerfile
    assert any(k == "RUN" and "pip install --build-constraint build-constraints.txt ." in a for k, a in steps)
    assert any(k == "RUN" and "manage.py collectstatic --noinput" in a for k, a in steps)
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    assert keywords.index("USER") < keywords.index("CMD")
    assert ("EXPOSE", "8000") in steps
    cmd = dict(steps)["CMD"]
    assert cmd == '["daphne", "-b", "0.0.0.0", "-p", "8000", "console.asgi:application"]'
    healthcheck = dict(steps)["HEALTHCHECK"]
    assert "http://127.0.0.1:8000/healthz" in healthcheck
    assert "urllib" in healthcheck
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "DATA_DIR=/var/lib/console" in env
    assert "MODEL_STORE=/models" in env


def test_dockerignore_keeps_secrets_out_of_the_image():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".data", ".venv", ".git", "deploy/certs"} <= ignored


# --- proxy -----------------------------------------------------------------------------------------


def braced_block(conf: str, start: int) -> str:
    """The text from start through the brace that closes the first block opened after it."""
    depth = 0
    for index in range(conf.index("{", start), len(conf)):
        if conf[index] == "{":
            depth += 1
        elif conf[index] == "}":
            depth -= 1
            if depth == 0:
                return conf[start : index + 1]
    raise AssertionError("unbalanced braces")


def tls_server(conf: str) -> str:
    """The server block that listens on 443."""
    for match in re.finditer(r"^server\s*\{", conf, re.MULTILINE):
        block = braced_block(conf, match.start())
        if re.search(r"listen 443 ssl", block):
            return block
    raise AssertionError("no server listens on 443")


def location_block(server: str, prefix: str) -> str:
    return braced_block(server, server.index(f"location {prefix} {{"))


def test_proxy_mounts_its_config_and_certificate(services):
    mounts = {target: source for _kind, source, target in volume_mounts(services["proxy"])}
    assert mounts["/etc/nginx/conf.d"] == "./deploy/nginx"
    assert mounts["/etc/nginx/certs"] == "./deploy/certs"
    assert NGINX_CONF.is_file()


def test_proxy_config(services):
    conf = NGINX_CONF.read_text()
    assert re.search(r"listen 443 ssl", conf)
    assert "return 301 https://$host$request_uri;" in conf
    assert "ssl_certificate     /etc/nginx/certs/tls.crt;" in conf
    assert "ssl_certificate_key /etc/nginx/certs/tls.key;" in conf
    assert "Strict-Transport-Security" in conf
    assert "http://web:8000" in conf
    assert "client_max_body_size" in conf
    server = tls_server(conf)
    for prefix in ("/ws/", "~ ^/(v1|llm)/", "/"):
        block = location_block(server, prefix)
        assert "proxy_set_header X-Forwarded-Proto $scheme;" in block, prefix
        assert "proxy_set_header X-Forwarded-For $remote_addr;" in block, prefix
        assert "proxy_set_header Host $host;" in block, prefix
    websocket = location_block(server, "/ws/")
    assert "proxy_http_version 1.1;" in websocket
    assert "proxy_set_header Upgrade $http_upgrade;" in websocket
    assert "proxy_set_header Connection $connection_upgrade;" in websocket
    assert re.search(r"proxy_read_timeout \d{4,}s;", websocket)
    # Applications reach the gateway through the proxy; streams are not buffered on the way.
    gateway = location_block(server, "~ ^/(v1|llm)/")
    assert "proxy_pass $console_gateway;" in gateway and "http://gateway:8001" in conf
    assert "proxy_buffering off;" in gateway
    # The client address daphne and the gateway report comes from that X-Forwarded-For.
    assert "--proxy-headers" in command_text(services["web"])
    assert "--proxy-headers" in command_text(services["gateway"])
    # The proxy's own probe is on a loopback listener the config defines.
    probe = " ".join(services["proxy"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8081/healthz" in probe
    assert "listen 127.0.0.1:8081;" in conf


def test_certificate_tooling():
    script = ROOT / "deploy" / "make-self-signed-cert.sh"
    assert script.is_file() and os.access(script, os.X_OK)
    text = script.read_text()
    assert "openssl req -x509" in text
    assert 'chmod 600 "$key"' in text
    assert set((ROOT / "deploy" / "certs" / ".gitignore").read_text().split()) >= {"*.crt", "*.key"}
    assert (ROOT / "deploy" / "certs" / "README.md").is_file()


# --- the GPU host agent example ------------------------------------------------------------------------


def test_commented_agent_example(compose_text, services):
    assert "agent" not in services
    comments = "\n".join(line.lstrip()[1:] for line in compose_text.splitlines() if line.lstrip().startswith("#"))
    assert re.search(r"^\s*agent:", comments, re.MULTILINE)
    command = re.search(r"command: (\[.*?\])", comments, re.DOTALL)
    assert command, "the agent example has no command"
    words = yaml.safe_load(command.group(1))
    assert words[:4] == ["celery", "-A", "console", "worker"]
    assert words[words.index("-Q") + 1] == "host.gpu01"  # not the console's queue: its jobs write the console's disk
    assert "driver: nvidia" in comments
    assert "capabilities: [gpu]" in comments
    assert "Every GPU host runs one" in comments


# --- the operations guide ------------------------------------------------------------------------------


def test_operations_guide_documents_every_setting(compose_text):
    guide = (ROOT / "docs" / "operations.md").read_text()
    read_by_settings = set(re.findall(r"env_(?:str|bool|int|list)\(\s*\"([A-Z0-9_]+)\"", SETTINGS_FILE.read_text()))
    assert {"DATA_DIR", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SECRETS_ENCRYPTION_KEYS"} <= read_by_settings
    active = "\n".join(line for line in compose_text.splitlines() if not line.lstrip().startswith("#"))
    interpolated = {match.group(1) for match in VARIABLE.finditer(active.replace("$$", ""))}
    for variable in sorted(read_by_settings | interpolated):
        assert f"`{variable}`" in guide, f"docs/operations.md does not describe {variable}"
    for command in (
        "rotate_secrets_key --check",
        "axes_reset",
        "sync_roles",
        "pg_dump",
        "docker compose exec web cat /var/lib/console/initial_admin_password",
    ):
        assert command in guide, command
