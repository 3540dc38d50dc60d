"""The production deployment files hold together: docker-compose.yml, the Dockerfile, the proxy's nginx
config, the monitoring services, .env.example and the settings they feed.

No database is needed: the compose file is parsed with PyYAML and checked against the repository, and Debian's
docker-compose (1.29, compose v1; CI installs it) validates it as operators on Debian run it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
# Started only with `--profile monitoring`.
MONITORING_SERVICES = ("prometheus", "grafana")
PROMETHEUS_DOCKERFILE = ROOT / "deploy" / "monitoring" / "prometheus" / "Dockerfile"
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
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "web",
        "gateway",
        "worker",
        "beat",
        "proxy",
        *MONITORING_SERVICES,
    }
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == set(MONITORING_SERVICES), "only the monitoring services wait for a profile"
    for name in MONITORING_SERVICES:
        assert services[name]["profiles"] == ["monitoring"], name


def test_compose_v1_reads_the_file(compose):
    """Debian's docker-compose 1.29 refuses a top-level `name:`; the project's name comes from .env, and the
    volumes keep the names the former `name: llmdeploy-console` gave them (an upgrade finds its data)."""
    assert set(compose) <= {"services", "networks", "volumes", "secrets", "configs"} | {
        key for key in compose if key.startswith("x-")
    }
    assert "name" not in compose
    assert re.search(r"^COMPOSE_PROJECT_NAME=llmdeploy-console$", (ROOT / ".env.example").read_text(), re.MULTILINE)
    for volume, spec in compose["volumes"].items():
        assert spec["name"] == f"llmdeploy-console_{volume}", volume


@pytest.mark.parametrize("profile", [None, "monitoring"])
def test_docker_compose_v1_validates(tmp_path, profile):
    """`docker-compose config` (compose v1, as Debian ships it) accepts the file with .env.example's variables."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (Debian's package, compose v1) is needed: apt-get install docker-compose"
    env_file = tmp_path / ".env"
    example = (ROOT / ".env.example").read_text()
    env_file.write_text(re.sub(r"^([A-Z_]+)=$", r"\1=set-for-the-test", example, flags=re.MULTILINE))
    command = [binary, "--project-directory", str(ROOT), "--env-file", str(env_file), "-f", str(COMPOSE_FILE)]
    if profile:
        command += ["--profile", profile]
    result = subprocess.run(
        [*command, "config"], capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]}
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(MONITORING_SERVICES) <= set(resolved["services"])
    assert resolved["services"]["grafana"]["image"] == "grafana/grafana-oss:11.4.0"
    assert resolved["services"]["prometheus"]["environment"]["METRICS_BEARER_TOKEN"] == "set-for-the-test"
    assert resolved["services"]["web"]["environment"]["METRICS_BEARER_TOKEN"] == "set-for-the-test"


def test_every_service_has_an_image_or_a_build(services):
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"


def test_service_images_are_built_here_from_debian_packages(services):
    """No registry: PostgreSQL, Redis and the proxy are Debian's packages on the bundle's base (issue 22)."""
    for name, directory in (("postgres", "postgres"), ("redis", "redis"), ("proxy", "nginx")):
        service = services[name]
        assert service["image"] == f"llmdeploy-{name}:${{CONSOLE_IMAGE_TAG:-latest}}"
        assert build_dockerfile(service) == ROOT / "deploy" / "images" / directory / "Dockerfile"
        steps = instructions(build_dockerfile(service).read_text())
        assert steps[0] == ("ARG", "BASE_IMAGE=llmdeploy-base:bookworm") and steps[1] == ("FROM", "${BASE_IMAGE}")
    # Without a config file Redis refuses every client but loopback unless protected mode is off.
    assert "--protected-mode no" in command_text(services["redis"])


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
    """The proxy publishes 80 and 443; Prometheus and Grafana listen on the machine's loopback only."""
    publishing = sorted(name for name, service in services.items() if service.get("ports"))
    assert publishing == ["grafana", "prometheus", "proxy"]
    ports = {str(port) for port in services["proxy"]["ports"]}
    assert ports == {"80:80", "443:443"}
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def test_every_long_running_service_is_health_checked(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        healthy_dependencies = [dep for dep, cond in depends_on(service).items() if cond == "service_healthy"]
        assert has_healthcheck(service) or healthy_dependencies, f"{name}: no healthcheck and no healthy dependency"
    for name in ("postgres", "redis", "web", "gateway", "worker", "proxy", "prometheus"):
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
    assert {
        "postgres-data",
        "redis-data",
        "console-data",
        "model-store",
        "audit-checkpoints",
        "prometheus-data",
        "grafana-data",
    } <= set(compose["volumes"])


# --- monitoring ------------------------------------------------------------------------------------------


def test_prometheus_service(services):
    prometheus = services["prometheus"]
    assert build_context(prometheus) == ROOT
    assert build_dockerfile(prometheus) == PROMETHEUS_DOCKERFILE
    # The same token the console asks for; Prometheus reaches web on the backend network and Grafana on its own.
    assert prometheus["environment"]["METRICS_BEARER_TOKEN"] == "${METRICS_BEARER_TOKEN:-}"
    assert services["web"]["environment"]["METRICS_BEARER_TOKEN"] == "${METRICS_BEARER_TOKEN:-}"
    assert set(prometheus["networks"]) == {"backend", "monitoring"}
    assert services["grafana"]["networks"] == ["monitoring"]
    assert depends_on(prometheus) == {"web": "service_healthy"}
    assert any(target == "/var/lib/prometheus" for _k, _s, target in volume_mounts(prometheus))
    # The scrape address: Django must accept the Host header, and discovery must name it.
    env = services["web"]["environment"]
    assert "web" in env["ALLOWED_HOSTS"].split("}", 1)[1].split(",")
    assert env["METRICS_PUBLIC_ADDRESS"] == "web:8000"
    config = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    urls = [sd["url"] for job in config["scrape_configs"] for sd in job.get("http_sd_configs", [])]
    assert urls and all(url.startswith("http://web:8000/metrics/targets?kind=") for url in urls)


PROBE = """
import django
django.setup()
from django.http import HttpResponse
from django.middleware.security import SecurityMiddleware
from django.test import RequestFactory
for path in ("/metrics", "/metrics/targets", "/metrics/deployments/1"):
    request = RequestFactory().get(path, HTTP_HOST="web:8000")
    request.get_host()  # DisallowedHost unless ALLOWED_HOSTS names web
    print(path, SecurityMiddleware(lambda request: HttpResponse())(request).status_code)
"""


def test_prometheus_reaches_the_console_over_plain_http(services, tmp_path):
    """With web's environment from docker-compose.yml (SECURE_TLS: https only, through the proxy), Prometheus'
    plain-HTTP requests to web:8000 for /metrics, discovery and the proxied deployments are neither refused for
    their Host nor redirected to https (which web:8000 does not speak)."""
    from cryptography.fernet import Fernet

    values = {
        "CONSOLE_HOSTNAME": "console.example.internal",
        "SECRETS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "DATABASE_APP_PASSWORD": "x",
    }

    def resolve(value: str) -> str:
        return VARIABLE.sub(lambda m: values.get(m.group(1), "set-for-the-test"), str(value))

    env = {key: resolve(value) for key, value in services["web"]["environment"].items()}
    env.update(PATH=os.environ["PATH"], DJANGO_SETTINGS_MODULE="console.settings", DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/metrics", "200", "/metrics/targets", "200", "/metrics/deployments/1", "200"]


def test_prometheus_image(services):
    """Debian's prometheus package on the bundle's Debian base: nothing pulled from a registry."""
    text = PROMETHEUS_DOCKERFILE.read_text()
    steps = instructions(text)
    assert steps[0] == ("ARG", "BASE_IMAGE=llmdeploy-base:bookworm")
    assert steps[1] == ("FROM", "${BASE_IMAGE}")
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "apt-get install -y --no-install-recommends prometheus" in runs
    for fetcher in ("curl", "wget", "pip", "go install", "ADD"):
        assert fetcher not in runs, fetcher
    assert "ADD" not in dict(steps)
    copies = [args.split() for keyword, args in steps if keyword == "COPY"]
    assert ["deploy/monitoring/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml"] in copies
    assert ["deploy/monitoring/prometheus/rules/", "/etc/prometheus/rules/"] in copies
    for source, _target in copies:
        assert (ROOT / source).exists(), source
    assert "promtool check rules" in runs
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users == ["prometheus"]
    assert "HEALTHCHECK" in dict(steps) and "/-/healthy" in dict(steps)["HEALTHCHECK"]
    entrypoint = ROOT / "deploy" / "monitoring" / "prometheus" / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    assert "/run/prometheus/metrics-token" in entrypoint.read_text()
    assert "exec /usr/bin/prometheus" in entrypoint.read_text()


def test_prometheus_entrypoint_writes_the_token(tmp_path):
    """The entrypoint puts METRICS_BEARER_TOKEN where prometheus.yml's credentials_file points, then runs
    Prometheus with the image's arguments (here a stand-in that prints them)."""
    entrypoint = (ROOT / "deploy" / "monitoring" / "prometheus" / "entrypoint.sh").read_text()
    script = tmp_path / "entrypoint.sh"
    token_file = tmp_path / "metrics-token"
    fake = tmp_path / "prometheus"
    fake.write_text('#!/bin/sh\necho "args: $*"\n')
    fake.chmod(0o755)
    script.write_text(
        entrypoint.replace("/run/prometheus/metrics-token", str(token_file)).replace("/usr/bin/prometheus", str(fake))
    )
    result = subprocess.run(
        ["sh", str(script), "--config.file=x"],
        capture_output=True,
        text=True,
        timeout=10,
        env={"PATH": os.environ["PATH"], "METRICS_BEARER_TOKEN": "s3cret"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "args: --config.file=x"
    assert token_file.read_text() == "s3cret"
    assert token_file.stat().st_mode & 0o077 == 0, "the token file is readable by others"
    config = (ROOT / "deploy" / "monitoring" / "prometheus" / "prometheus.yml").read_text()
    assert config.count("credentials_file: /run/prometheus/metrics-token") >= 3


def test_grafana_service(services):
    grafana = services["grafana"]
    assert grafana["image"] == "${GRAFANA_IMAGE:-grafana/grafana-oss:11.4.0}"
    read_only = {entry.split(":")[1]: entry.split(":")[0] for entry in grafana["volumes"] if entry.endswith(":ro")}
    assert read_only == {
        "/etc/grafana/provisioning": "./deploy/monitoring/grafana/provisioning",
        "/etc/grafana/dashboards": "./deploy/monitoring/grafana/dashboards",
    }
    assert any(target == "/var/lib/grafana" for _k, _s, target in volume_mounts(grafana))
    assert depends_on(grafana) == {"prometheus": "service_healthy"}
    env = grafana["environment"]
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy" / "monitoring" / "grafana" / "dashboards" / Path(home).name).is_file()
    provider = yaml.safe_load(
        (ROOT / "deploy" / "monitoring" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    datasource = yaml.safe_load(
        (ROOT / "deploy" / "monitoring" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


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
    # The bundle's own Debian base, Debian's Python, and only the pinned wheels (no index): nothing is pulled.
    assert steps[:2] == [("ARG", "BASE_IMAGE=llmdeploy-base:bookworm"), ("FROM", "${BASE_IMAGE} AS runtime")]
    # Two stages on one runtime: `build` installs the wheels into /opt/venv, the final image takes only the venv and the
    # tree, so the wheels never reach one of its layers.
    froms = [index for index, (keyword, _) in enumerate(steps) if keyword == "FROM"]
    assert [steps[index][1] for index in froms] == ["${BASE_IMAGE} AS runtime", "runtime AS build", "runtime"]
    build, final = steps[froms[1] : froms[2]], steps[froms[2] :]
    assert any(k == "RUN" and "apt-get install" in a and "python3-venv" in a for k, a in build)
    assert any(k == "RUN" and "pip install --no-index" in a and "console.lock.txt" in a for k, a in build)
    assert not re.search(r"pip install (?!.*--no-index)", dockerfile), "every pip install must be --no-index"
    copies = [args for keyword, args in final if keyword == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv", "--from=build /src /app"]
    assert not any("wheels" in args for keyword, args in final if keyword != "RUN")
    assert any(k == "RUN" and "rm -rf" in a and "/src/wheels" in a for k, a in build)
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
