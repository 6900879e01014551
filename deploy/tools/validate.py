#!/usr/bin/env python3
"""Validates the Kubernetes kit in deploy/ offline (scripts/validate-deploy.sh runs it).

1. Renders every kustomization under deploy/ with `kubectl kustomize` (or `kustomize build`),
   on a copy of deploy/ where each missing secret file is made from its `.example`.
2. Checks every rendered object against the Kubernetes JSON schemas shipped in the
   kubernetes-validate package (strict: an unknown field is an error), for each version in
   KUBE_VERSIONS; custom resources against the schemas committed in deploy/schemas/ (an object
   with neither is an error).
3. Checks what the schemas cannot: probes on /livez and /readyz at the port the binary listens on
   (EDGE_ADDR / METRICS_ADDR), termination grace longer than SHUTDOWN_GRACE_SECS (+ preStop),
   the KEDA trigger naming the stream and consumer that NATS_PREFIX makes, no HPA on a
   KEDA-scaled Deployment, selectors and named ports that resolve, Secrets referenced that
   exist, no secret in a ConfigMap, the restricted security context and resources everywhere.
4. `nats-server -t` on deploy/nats/nats.conf when nats-server is installed.
5. The binaries' sources serve /livez and /readyz.
6. With --self-test: deliberately broken copies of deploy/base must each be refused.

Exit status 1 on any error; every error is printed.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

# The package reads its large definitions file on every object: read each file once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

KUBE_VERSIONS = ["1.30", "1.37"]
SECRET_KEYS = {"AUTH_SECRET", "ADMIN_TOKEN", "DATABASE_URL", "OPENAI_API_KEY", "NATS_NKEY"}
# Listen address each binary's probes must reach, and its default (SPEC §2).
LISTEN = {"edge": ("EDGE_ADDR", "127.0.0.1:8080"), "worker": ("METRICS_ADDR", "127.0.0.1:9091")}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: str, msg: str) -> None:
        self.errors.append(f"{where}: {msg}")

    def warn(self, where: str, msg: str) -> None:
        self.warnings.append(f"{where}: {msg}")


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(cmd: list[str], directory: Path) -> list[dict]:
    out = subprocess.run(cmd + [str(directory)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or out.stdout.strip())
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in WORKLOAD_KINDS:
        return ((obj.get("spec") or {}).get("template") or {}).get("spec")
    return None


def pod_labels(obj: dict) -> dict:
    return (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


# ---- schemas ------------------------------------------------------------------------------


def custom_schemas(schema_dir: Path) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> schema, from deploy/schemas/<kind>-<group>-<version>.json."""
    found = {}
    for path in sorted(schema_dir.glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        props = schema.get("properties", {})
        api = props.get("apiVersion", {}).get("const")
        kind = props.get("kind", {}).get("const")
        if api and kind:
            found[(api, kind)] = schema
    return found


def check_schema(obj: dict, where: str, customs: dict, report: Report) -> None:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in customs:
        validator = jsonschema.Draft202012Validator(customs[key])
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in err.path)
            report.error(where, f"{name_of(obj)} ({key[0]}): {path}: {err.message}")
        return
    for version in KUBE_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            report.error(where, f"{name_of(obj)} against Kubernetes {version}: {path}: {err.message}")
        except kv.SchemaNotFoundError as err:
            report.error(where, f"{name_of(obj)}: no schema ({err.message}); add one to deploy/schemas/")
            return


# ---- what the binaries expect --------------------------------------------------------------


def container_env(container: dict, configmaps: dict[str, dict]) -> dict[str, str | None]:
    """The container's environment: envFrom ConfigMaps, then env (value, or None for a ref)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref and ref.get("name") in configmaps:
            env.update(configmaps[ref["name"]])
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value") if "value" in var else None
    return env


def probe_port(container: dict, probe: dict) -> int | None:
    port = (probe.get("httpGet") or {}).get("port")
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def prestop_seconds(container: dict) -> int:
    pre = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0] in ("sleep", "/bin/sleep") and cmd[1].isdigit():
        return int(cmd[1])
    return 0


def check_security(obj: dict, spec: dict, where: str, report: Report) -> None:
    pod_sc = spec.get("securityContext") or {}
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        who = f"{name_of(obj)} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            report.error(where, f"{who}: runAsNonRoot is not true")
        if sc.get("readOnlyRootFilesystem") is not True:
            report.error(where, f"{who}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            report.error(where, f"{who}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            report.error(where, f"{who}: capabilities.drop lacks ALL")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    report.error(where, f"{who}: resources.{kind}.{r} is not set")


def check_app_container(obj: dict, spec: dict, c: dict, role: str, env: dict, where: str,
                        secrets: dict[str, dict] | None, report: Report) -> None:
    who = f"{name_of(obj)} container {c.get('name')}"
    var, default = LISTEN[role]
    addr = env.get(var) or default
    m = re.fullmatch(r"\[?([^\]]*)\]?:(\d+)", addr)
    if not m:
        report.error(where, f"{who}: {var}={addr!r} is not host:port")
        return
    host, port = m.group(1), int(m.group(2))
    if host.startswith("127.") or host in ("localhost", "::1"):
        report.error(where, f"{who}: {var}={addr} listens on loopback: the kubelet's probes cannot reach it")
    for probe_name, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"),
                             ("startupProbe", "/livez")):
        probe = c.get(probe_name)
        if probe is None:
            if probe_name != "startupProbe":
                report.error(where, f"{who}: no {probe_name} (GET {path})")
            continue
        got_path = (probe.get("httpGet") or {}).get("path")
        if got_path != path:
            report.error(where, f"{who}: {probe_name} asks {got_path!r}, the binary serves {path}")
        got_port = probe_port(c, probe)
        if got_port != port:
            report.error(where, f"{who}: {probe_name} port {got_port} is not {var}'s port {port}")
    grace_setting = env.get("SHUTDOWN_GRACE_SECS")
    if grace_setting is None or not str(grace_setting).isdigit():
        report.error(where, f"{who}: SHUTDOWN_GRACE_SECS is not set explicitly")
    else:
        need = int(grace_setting) + prestop_seconds(c)
        have = spec.get("terminationGracePeriodSeconds", 30)
        if have <= need:
            report.error(where, f"{who}: terminationGracePeriodSeconds {have} is not above "
                                f"SHUTDOWN_GRACE_SECS + preStop = {need}")
    if role == "edge" and prestop_seconds(c) == 0:
        report.error(where, f"{who}: no preStop sleep: the Service would still send connections to a closing edge")
    creds = env.get("NATS_CREDS")
    if creds:
        mount_dir, file_name = os.path.split(creds)
        vols = {v["name"]: v for v in spec.get("volumes") or []}
        ok = False
        for vm in c.get("volumeMounts") or []:
            if vm.get("mountPath", "").rstrip("/") == mount_dir:
                secret = (vols.get(vm["name"]) or {}).get("secret") or {}
                items = secret.get("items")
                ok = bool(secret) and (items is None or any(i.get("path") == file_name for i in items))
        if not ok:
            report.error(where, f"{who}: NATS_CREDS={creds} is not a file mounted from a Secret")
    check_secret_refs(obj, c, where, secrets, report)


def check_secret_refs(obj: dict, c: dict, where: str, secrets: dict[str, dict] | None,
                      report: Report) -> None:
    if secrets is None:
        return  # a base renders without its Secrets: the overlays are checked
    who = f"{name_of(obj)} container {c.get('name')}"
    for var in c.get("env") or []:
        ref = (var.get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            continue
        data = secrets.get(ref.get("name"))
        if data is None:
            report.error(where, f"{who}: env {var['name']} names Secret {ref.get('name')}, which is not rendered")
        elif ref.get("key") not in data and not ref.get("optional"):
            report.error(where, f"{who}: env {var['name']}: Secret {ref.get('name')} has no key {ref.get('key')}")


def check_renders(where: str, objs: list[dict], is_base: bool, report: Report) -> None:
    configmaps = {
        o["metadata"]["name"]: {k: str(v) for k, v in (o.get("data") or {}).items()}
        for o in objs if o.get("kind") == "ConfigMap"
    }
    secrets: dict[str, dict] | None = None
    if not is_base:
        secrets = {}
        for o in objs:
            if o.get("kind") == "Secret":
                data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (o.get("data") or {}).items()}
                data.update(o.get("stringData") or {})
                secrets[o["metadata"]["name"]] = data
    for name, data in configmaps.items():
        leaked = SECRET_KEYS & set(data)
        if leaked:
            report.error(where, f"ConfigMap/{name} carries secrets {sorted(leaked)}: they belong in a Secret")
    for data in (secrets or {}).values():
        url = data.get("DATABASE_URL")
        if url is not None and "sslmode=verify-full" not in url:
            report.error(where, "Secret DATABASE_URL does not ask for sslmode=verify-full")

    workloads = [o for o in objs if pod_spec(o) is not None]
    deployments = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "Deployment"}
    for obj in workloads:
        spec = pod_spec(obj)
        check_security(obj, spec, where, report)
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for claim in (obj.get("spec") or {}).get("volumeClaimTemplates") or []:
            volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"]}
        for c in spec.get("containers") or []:
            env = container_env(c, configmaps)
            for vm in c.get("volumeMounts") or []:
                if vm["name"] not in volumes:
                    report.error(where, f"{name_of(obj)}: volumeMount {vm['name']} has no volume")
            if obj.get("kind") == "Deployment" and c.get("name") in LISTEN:
                check_app_container(obj, spec, c, c["name"], env, where, secrets, report)
            else:
                check_secret_refs(obj, c, where, secrets, report)
            if obj.get("kind") == "Job" and (pod_labels(obj).get("app.kubernetes.io/component") == "migrate"):
                if (c.get("args") or [])[:2] != ["setup", "--apply"]:
                    report.error(where, f"{name_of(obj)}: the migration Job must run `worker setup --apply`")
            if secrets is not None:
                for vol in volumes.values():
                    sname = (vol.get("secret") or {}).get("secretName")
                    if sname and sname not in secrets:
                        report.error(where, f"{name_of(obj)}: volume {vol['name']} names Secret {sname}, which is not rendered")
                    for item in (vol.get("secret") or {}).get("items") or []:
                        if sname in secrets and item.get("key") not in secrets[sname]:
                            report.error(where, f"{name_of(obj)}: Secret {sname} has no key {item.get('key')}")

    keda_targets = set()
    for so in (o for o in objs if o.get("kind") == "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]["name"]
        keda_targets.add(target)
        dep = deployments.get(target)
        if dep is None:
            report.error(where, f"{name_of(so)}: scales Deployment {target}, which is not rendered")
            continue
        if "replicas" in dep["spec"]:
            report.error(where, f"Deployment/{target}: sets replicas while KEDA scales it (a re-apply would fight the autoscaler)")
        worker = next((c for c in pod_spec(dep)["containers"] if c.get("name") == "worker"), None)
        prefix = (container_env(worker, configmaps).get("NATS_PREFIX") if worker else None) or "chat"
        for trig in so["spec"]["triggers"]:
            if trig.get("type") != "nats-jetstream":
                continue
            meta = trig.get("metadata") or {}
            if meta.get("stream") != prefix.upper() + "_IN":
                report.error(where, f"{name_of(so)}: stream {meta.get('stream')!r}, but NATS_PREFIX={prefix} makes {prefix.upper()}_IN")
            if meta.get("consumer") != prefix + "-workers":
                report.error(where, f"{name_of(so)}: consumer {meta.get('consumer')!r}, but NATS_PREFIX={prefix} makes {prefix}-workers")
            endpoint = meta.get("natsServerMonitoringEndpoint", "")
            if endpoint and not endpoint.endswith(":8222"):
                report.warn(where, f"{name_of(so)}: monitoring endpoint {endpoint} is not NATS's port 8222")
    for hpa in (o for o in objs if o.get("kind") == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") == "Deployment" and ref.get("name") not in deployments:
            report.error(where, f"{name_of(hpa)}: scales Deployment {ref.get('name')}, which is not rendered")
        if ref.get("name") in keda_targets:
            report.error(where, f"{name_of(hpa)}: Deployment {ref.get('name')} is scaled by KEDA: two autoscalers would fight")
        dep = deployments.get(ref.get("name"))
        if dep is not None and "replicas" in dep["spec"]:
            report.error(where, f"Deployment/{ref.get('name')}: sets replicas while an HPA scales it")
    for pdb in (o for o in objs if o.get("kind") == "PodDisruptionBudget"):
        if not any(selects(pdb["spec"].get("selector") or {}, pod_labels(w)) for w in workloads):
            report.error(where, f"{name_of(pdb)}: its selector matches no pods")
    for svc in (o for o in objs if o.get("kind") == "Service"):
        sel = (svc.get("spec") or {}).get("selector")
        if not sel:
            continue
        matched = [w for w in workloads if w.get("kind") != "Job" and selects(sel, pod_labels(w))]
        if not matched:
            report.error(where, f"{name_of(svc)}: its selector matches no pods")
            continue
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            names = {p.get("name") for w in matched for c in pod_spec(w)["containers"] for p in c.get("ports") or []}
            numbers = {p.get("containerPort") for w in matched for c in pod_spec(w)["containers"] for p in c.get("ports") or []}
            if target not in names and target not in numbers:
                report.error(where, f"{name_of(svc)}: targetPort {target} is no port of its pods")


# ---- outside the manifests -----------------------------------------------------------------


def check_nats_conf(deploy: Path, report: Report) -> None:
    conf = deploy / "nats" / "nats.conf"
    if not conf.exists():
        return
    server = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if server is None:
        report.warn("deploy/nats/nats.conf", "nats-server not installed: configuration not checked")
        return
    env = dict(os.environ, POD_NAME="nats-0")
    out = subprocess.run([server, "-c", str(conf), "-t"], capture_output=True, text=True, env=env, timeout=30)
    if out.returncode != 0:
        report.error("deploy/nats/nats.conf", (out.stderr or out.stdout).strip())


def check_sources(root: Path, report: Report) -> None:
    """The probe paths are routes the binaries really serve."""
    served = {}
    for binary in ("edge", "worker", "shared"):
        text = "".join(p.read_text(errors="replace") for p in (root / binary / "src").rglob("*.rs"))
        served[binary] = {path for path in ("/livez", "/readyz") if f'"{path}"' in text}
    if not any(served.values()):
        # Not yet in this source tree at all (the endpoints and the kit land separately).
        report.warn("sources", "no binary routes /livez or /readyz yet: the probes would fail")
        return
    for binary in ("edge", "worker"):
        missing = {"/livez", "/readyz"} - served[binary] - served["shared"]
        if missing:
            report.error("sources", f"{binary} does not route {sorted(missing)}, which its probes ask")


def validate_tree(cmd: list[str], deploy: Path, only: str | None, report: Report,
                  quiet: bool = False) -> int:
    """Renders and checks every kustomization of `deploy` (or only the one at `only`); returns
    the number of objects rendered."""
    customs = custom_schemas(deploy / "schemas")
    count = 0
    with tempfile.TemporaryDirectory(prefix="deploy-validate-") as tmp:
        copy = Path(tmp) / "deploy"
        shutil.copytree(deploy, copy)
        for example in copy.rglob("*.example"):
            real = example.with_suffix("")
            if not real.exists():
                shutil.copy(example, real)
        dirs = sorted(p.parent for p in copy.rglob("kustomization.yaml"))
        if only is not None:
            dirs = [copy / only]
        for directory in dirs:
            where = str(Path("deploy") / directory.relative_to(copy))
            try:
                objs = render(cmd, directory)
            except (RuntimeError, subprocess.TimeoutExpired, yaml.YAMLError) as err:
                report.error(where, f"does not render: {err}")
                continue
            if not objs:
                report.error(where, "renders no objects")
            for obj in objs:
                check_schema(obj, where, customs, report)
            check_renders(where, objs, is_base=directory.name == "base", report=report)
            count += len(objs)
            if not quiet:
                print(f"validate-deploy: {where}: {len(objs)} objects rendered")
    return count


# Deliberately broken copies of the kit that must fail: proves the checks can fail at all.
# (file under deploy/, text, replacement, what the error must mention)
SELF_TEST = [
    ("base/edge-deployment.yaml", "path: /readyz", "path: /healthz", "readinessProbe asks '/healthz'"),
    ("base/worker-deployment.yaml", "readinessProbe:", "readinesProbe:", "'readinesProbe' was unexpected"),
    ("base/worker-scaledobject.yaml", "consumer: chat-workers", "consumer: workers", "consumer 'workers'"),
    ("base/worker-scaledobject.yaml", "minReplicaCount:", "minReplicas:", "'minReplicas' was unexpected"),
    ("base/edge-deployment.yaml", "terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 30",
     "terminationGracePeriodSeconds 30"),
]


def self_test(cmd: list[str], deploy: Path) -> list[str]:
    failures = []
    for rel, old, new, expect in SELF_TEST:
        with tempfile.TemporaryDirectory(prefix="deploy-selftest-") as tmp:
            broken = Path(tmp) / "deploy"
            shutil.copytree(deploy, broken)
            target = broken / rel
            text = target.read_text()
            if old not in text:
                failures.append(f"self-test: {rel} no longer contains {old!r}: update SELF_TEST")
                continue
            target.write_text(text.replace(old, new, 1))
            report = Report()
            validate_tree(cmd, broken, "base", report, quiet=True)
            if not any(expect in e for e in report.errors):
                failures.append(f"self-test: {rel} with {new!r} was not refused (expected {expect!r})")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--self-test", action="store_true",
                        help="also check that deliberately broken copies of deploy/base fail")
    args = parser.parse_args()
    root: Path = args.root.resolve()
    deploy = root / "deploy"
    report = Report()

    cmd = renderer()
    if cmd is None:
        print("validate-deploy: neither kustomize nor kubectl is installed: cannot render the kit", file=sys.stderr)
        return 1
    count = validate_tree(cmd, deploy, None, report)
    check_nats_conf(deploy, report)
    check_sources(root, report)
    if args.self_test:
        for failure in self_test(cmd, deploy):
            report.error("deploy/tools/validate.py", failure)
        if not any("self-test" in e for e in report.errors):
            print(f"validate-deploy: self-test: {len(SELF_TEST)} broken copies refused")

    for w in report.warnings:
        print(f"WARN  {w}", file=sys.stderr)
    for e in report.errors:
        print(f"ERROR {e}", file=sys.stderr)
    if report.errors:
        print(f"validate-deploy: {len(report.errors)} error(s)", file=sys.stderr)
        return 1
    print(f"validate-deploy: {count} objects valid against Kubernetes {', '.join(KUBE_VERSIONS)} "
          f"and deploy/schemas/; probes, ports, grace periods, autoscaling and references consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
