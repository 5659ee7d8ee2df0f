"""Checks the shape of deploy/: the compose file, the Prometheus config,
the alert rules, the Grafana provisioning and dashboard, and the command
lines of the systemd units and containers against the binaries' --help.

Usage: python deploy_files.py REPO_ROOT BIN_DIR
Which metrics the dashboard and the alerts name is checked against live
/metrics by `cargo test -p order-service --test deploy`.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

root, bins = Path(sys.argv[1]), Path(sys.argv[2])
deploy = root / "deploy"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def flags_of(binary):
    """Every --flag the binary's --help lists."""
    out = subprocess.run([str(bins / binary), "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--[a-z][a-z-]*", out))


def check_command(words, where):
    """The binary exists and knows every --flag the command line passes."""
    binary = Path(words[0]).name
    check((bins / binary).is_file(), f"{where}: {binary} is a binary of the workspace")
    if (bins / binary).is_file():
        known = flags_of(binary)
        for w in words[1:]:
            if w.startswith("--"):
                check(w in known, f"{where}: {binary} accepts {w}")


# compose.yaml
compose = yaml.safe_load((deploy / "compose.yaml").read_text())
services = compose["services"]
check(set(services) == {"broker", "access", "order-service", "prometheus", "grafana"}, f"compose services: {sorted(services)}")
check(services["broker"]["build"]["dockerfile"] == "deploy/Dockerfile", "compose builds deploy/Dockerfile")
check((deploy / services["broker"]["build"]["context"] / "Cargo.toml").is_file(), "compose build context is the workspace")
for name in ("broker", "order-service"):
    s = services[name]
    check_command(s["command"], f"compose {name}")
    check("healthcheck" in s, f"compose {name} has a health check")
check("/readyz" in " ".join(services["broker"]["healthcheck"]["test"]), "the broker's health check is /readyz")
check(services["order-service"]["depends_on"]["broker"]["condition"] == "service_healthy",
      "the order service waits for a ready broker")
for name, s in services.items():
    for v in s.get("volumes", []):
        source = v.split(":")[0]
        if source.startswith("./"):
            check((deploy / source).exists(), f"compose {name} mounts {source}, which exists")
    for p in s.get("ports", []):
        check(str(p).startswith("127.0.0.1:"), f"compose {name} publishes {p} on loopback only")
# Authentication: the broker's [auth] on with a bootstrap token from a
# compose secret kept out of git and the image; the order API on broker
# tokens; every part of the order service, the delivery simulator and
# Prometheus with a token file of a principal deploy/stack.toml declares,
# made by the access service. (order-service/tests/deploy.rs runs these
# settings against a real broker.)
broker_env = services["broker"].get("environment", {})
check(str(broker_env.get("STREAM_BROKER_AUTH__ENABLED")).lower() == "true", "compose turns the broker's auth on")
secrets = compose.get("secrets", {})
bootstrap = broker_env.get("STREAM_BROKER_AUTH__BOOTSTRAP_TOKEN_FILE", "")
check(bootstrap.startswith("/run/secrets/") and bootstrap.removeprefix("/run/secrets/") in services["broker"].get("secrets", []),
      f"the broker's bootstrap token is a compose secret: {bootstrap}")
for name, spec in secrets.items():
    check(spec.get("file", "").startswith("./secrets/"), f"compose secret {name} is a file under deploy/secrets/")
ignore = (deploy / "secrets" / ".gitignore")
check(ignore.is_file() and "*" in ignore.read_text().split(), "git ignores deploy/secrets/")
check("deploy/secrets/" in (deploy / "Dockerfile.dockerignore").read_text().split(), "the image build skips deploy/secrets/")
osvc = services["order-service"]
oenv = osvc["environment"]
check(oenv.get("ORDER_SERVICE_API_AUTH__MODE") == "broker-token", "the order API takes broker tokens")
check(oenv.get("ORDER_SERVICE_BROKER") == "http://broker:7470", "the order service uses the compose broker")
check(osvc["depends_on"].get("access", {}).get("condition") == "service_completed_successfully",
      "the order service starts once its tokens are made")
script = " ".join(services["access"]["command"])
made = set(re.search(r"for p in ([a-z -]+); do", script).group(1).split())
stack_text = (deploy / "stack.toml").read_text()
declared = set(re.findall(r'^name = "([a-z-]+)"', stack_text.split("# Principals:")[1], re.M))
check(made == declared, f"the access service makes a token for each declared principal: {sorted(made ^ declared)}")
token_env = {k: v for k, v in osvc["environment"].items() if k.endswith("_TOKEN_FILE")}
roles = {"SETUP", "RELAY", "EXTERNAL_PARTIES", "DELIVERY_COMPANY", "CUSTOMER_SERVICE"}
check({k.removeprefix("ORDER_SERVICE_BROKER_CREDENTIALS__").removesuffix("_TOKEN_FILE") for k in token_env} >= roles,
      "every part of the order service has its token file")
for k, v in token_env.items():
    check(re.fullmatch(r"/tokens/[a-z-]+\.token", v) is not None and v[8:-6] in made, f"{k} is a made token: {v}")
named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
check(named <= set(compose.get("volumes", {})), f"compose declares its named volumes {sorted(named)}")

# Dockerfile
dockerfile = (deploy / "Dockerfile").read_text()
check(len(re.findall(r"^FROM ", dockerfile, re.M)) == 2, "the Dockerfile has a build and a run stage")
check(re.search(r"^USER (?!root)\S+", dockerfile, re.M) is not None, "the image runs as a non-root user")
check("/readyz" in dockerfile and "HEALTHCHECK" in dockerfile, "the image's health check is /readyz")
cmd = json.loads(re.search(r"^CMD (\[.*?\])$", dockerfile.replace("\\\n", ""), re.M | re.S).group(1))
check_command(cmd, "Dockerfile CMD")

# Prometheus: both services scraped where compose runs them.
prom = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
targets = {c["job_name"]: [t for s in c["static_configs"] for t in s["targets"]] for c in prom["scrape_configs"]}
for c in prom["scrape_configs"]:
    cred = c.get("authorization", {}).get("credentials_file")
    check(cred == "/tokens/prometheus.token", f"Prometheus scrapes {c['job_name']} with the prometheus token: {cred}")
check("tokens:/tokens:ro" in services["prometheus"]["volumes"], "Prometheus mounts the tokens read-only")
check(targets.get("stream-broker") == ["broker:7471"], f"Prometheus scrapes the broker: {targets}")
check(targets.get("order-service") == ["order-service:8080"], f"Prometheus scrapes the order service: {targets}")
rules = yaml.safe_load((deploy / "prometheus" / "rules" / "alerts.yml").read_text())
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
expected = {"ShardFailed", "DiskBelowWatermark", "ConsumerLagHigh", "ThrottlingSustained", "OutboxStuck"}
check(expected <= alerts, f"alert rules: {sorted(alerts)}")

# Grafana: the data source uid the dashboard uses, and the dashboard directory.
ds = yaml.safe_load((deploy / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
check(ds["url"] == "http://prometheus:9090", "Grafana reads the compose Prometheus")
prov = yaml.safe_load((deploy / "grafana/provisioning/dashboards/dashboards.yml").read_text())
check(prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards", "Grafana loads the mounted dashboards")
dashboard = json.loads((deploy / "grafana/dashboards/stream-broker.json").read_text())
uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
check(uids == {ds["uid"]}, f"every query uses the provisioned data source: {uids}")

# systemd units: the command lines (systemd-analyze checks the rest).
for unit in sorted((deploy / "systemd").glob("*.service")):
    line = next(l for l in unit.read_text().splitlines() if l.startswith("ExecStart="))
    check_command(line.removeprefix("ExecStart=").split(), unit.name)

print(f"{len(failures)} failed" if failures else "deploy files: all checks passed")
sys.exit(1 if failures else 0)
