#!/usr/bin/env python3
"""Offline checks of the rendered Kubernetes manifests in deploy/.

Called by scripts/validate-manifests.sh with the rendered output of every
kustomization (one multi-document YAML file each). Exits non-zero, naming the
file, the object and the field, on the first kind of problem it finds in any
of them (every problem is listed, not only the first).

1. Schema, strict: every built-in object against the Kubernetes OpenAPI
   schemas that kubernetes-validate ships (unknown fields are errors), for the
   oldest Kubernetes we support and the newest the package knows. A kind it
   has no schema for is an error, never a silent pass.
2. ServiceMonitor / PodMonitor / PrometheusRule against the Prometheus
   Operator's CRD schema (the JSON schema of cloudcoil's models, generated
   from the operator's CRDs), made strict the same way: every object that
   lists its properties refuses the others. The project's own CRDs
   (IdentityPolicy) must be structural (a type on every node, no unions, no
   properties beside additionalProperties), and every custom resource of a
   rendered CRD (the example IdentityPolicy) is validated against its
   openAPIV3Schema, strictly (CEL rules are not evaluated offline: `nodeward
   check --identity-policy` runs the agent's own parser on them instead).
3. The project's own rules: every container has CPU and memory requests and
   a memory limit; probes point at a port the container declares and, for the
   nodeward image, at a path the agent serves on the admin port its config
   sets; the RBAC grants nothing beyond the pod and IdentityPolicy watches,
   IdentityPolicy status, events, SubjectAccessReviews, TokenReviews and
   the service-account issuer's two non-resource URLs; the agent
   drops every capability and adds only the four it needs; the monitors scrape
   a port that exists and honour the agent's labels; the config's paths are
   mounted; every opted-in pod's probe paths are let in anonymously by its
   policy (the kubelet's probes pass through nodeward); every alert has a
   severity, a summary, a description and a runbook_url naming a section of
   docs/operations.md, and the PrometheusRule holds exactly the groups of the
   plain rules file; the dashboard ConfigMap carries the Grafana sidecar's
   label and exactly the dashboard JSON.

It also writes the agent's config from the ConfigMap to --config-out, for
`nodeward check`.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import yaml
from cloudcoil.models.prometheus_operator import v1 as prom_v1

# Oldest supported (securityContext.appArmorProfile is GA since 1.30) and newest shipped.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())]

CRD_MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prom_v1.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): prom_v1.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prom_v1.PrometheusRule,
}

# The plain rules file the PrometheusRule is made from, the runbooks its
# alerts link to, and the dashboard its ConfigMap wraps.
RULES_FILE = Path("deploy/monitoring/alerts/nodeward.rules.yaml")
RUNBOOKS = Path("docs/operations.md")
DASHBOARD_FILE = Path("deploy/monitoring/dashboard/nodeward.json")
SEVERITIES = {"critical", "warning", "info"}

# (apiGroup, resource) -> verbs the agent may have. Anything else is an error.
ALLOWED_RBAC = {
    ("", "pods"): {"get", "list", "watch"},
    ("nodeward.io", "identitypolicies"): {"get", "list", "watch"},
    ("nodeward.io", "identitypolicies/status"): {"patch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    # kubernetes_rbac rules and token_review: true (docs/kubernetes.md).
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    ("authentication.k8s.io", "tokenreviews"): {"create"},
    # egress service_account / exchange tokens: TokenRequest (docs/egress.md).
    ("", "serviceaccounts/token"): {"create"},
}
REQUIRED_RBAC = {
    ("", "pods"): {"get", "list", "watch"},
    ("nodeward.io", "identitypolicies"): {"get", "list", "watch"},
    ("nodeward.io", "identitypolicies/status"): {"patch"},
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    ("authentication.k8s.io", "tokenreviews"): {"create"},
    ("", "serviceaccounts/token"): {"create"},
}
# The service-account issuer's discovery document and keys, read through the
# API server with the agent's credentials (kubernetes_service_accounts
# providers); nothing else of the non-resource URLs.
ALLOWED_NON_RESOURCE_URLS = {"/.well-known/openid-configuration", "/openid/v1/jwks"}

# Each one justified in deploy/base/daemonset.yaml and docs/kubernetes.md.
ALLOWED_CAPABILITIES = {"SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "BPF"}

AGENT_PATHS = {"/healthz", "/readyz", "/metrics"}
DEV_IDP_PATHS = {"/.well-known/openid-configuration", "/jwks"}

WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "ReplicaSet"}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


# === schemas ===


def strict(schema: Any) -> Any:
    """Every object schema that lists its properties refuses the others, as
    `kubectl apply --validate=strict` does for a CRD with a structural schema."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def check_builtin(where: str, doc: dict, problems: Problems) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            problems.add(where, f"Kubernetes {e.version} schema (strict): {path}: {e.message}")
            return
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            problems.add(where, f"no schema: {e.message} (a typo in apiVersion or kind?)")
            return


def check_crd(where: str, doc: dict, model: Any, problems: Problems) -> None:
    schema = strict(model.model_json_schema(mode="validation", by_alias=True))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    for e in errors:
        path = ".".join(str(p) for p in e.path) or "(top)"
        problems.add(where, f"{doc['kind']} CRD schema (strict): {path}: {e.message}")
    if not errors:
        try:
            model.model_validate(doc)
        except pydantic.ValidationError as e:
            problems.add(where, f"{doc['kind']} CRD model: {e}")


# === the project's CRDs and their custom resources ===


def check_structural(where: str, node: Any, at: str, problems: Problems) -> None:
    """Kubernetes' structural-schema rules, the ones a generator can break."""
    if not isinstance(node, dict):
        return
    untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if "type" not in node and not untyped_ok:
        problems.add(where, f"CRD schema not structural: {at or '(root)'} has no type")
    for union in ("oneOf", "anyOf", "allOf", "not", "$ref"):
        if union in node:
            problems.add(where, f"CRD schema not structural: {at or '(root)'} uses {union}")
    if "properties" in node and "additionalProperties" in node:
        problems.add(where, f"CRD schema not structural: {at} has both properties and additionalProperties")
    for rule in node.get("x-kubernetes-validations") or []:
        if not rule.get("rule") or not rule.get("message"):
            problems.add(where, f"{at}: a CEL validation without a rule or a message")
    for name, child in (node.get("properties") or {}).items():
        check_structural(where, child, f"{at}.{name}", problems)
    if isinstance(node.get("items"), dict):
        check_structural(where, node["items"], f"{at}[]", problems)
    if isinstance(node.get("additionalProperties"), dict):
        check_structural(where, node["additionalProperties"], f"{at}.*", problems)


def json_schema_of(openapi: Any) -> Any:
    """An openAPIV3Schema as a strict JSON Schema: `nullable` allows null,
    objects that list their properties refuse others (the API server prunes
    them; `kubectl apply --validate=strict` refuses them)."""
    if isinstance(openapi, list):
        return [json_schema_of(v) for v in openapi]
    if not isinstance(openapi, dict):
        return openapi
    out = {k: json_schema_of(v) for k, v in openapi.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if "properties" in out and "additionalProperties" not in out and not openapi.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if openapi.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("format", None)
    return out


def crd_schemas(docs: list[tuple[str, dict]]) -> dict[tuple[str, str], dict]:
    out = {}
    for _, doc in docs:
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc.get("spec") or {}
        for v in spec.get("versions") or []:
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            if schema:
                out[(f"{spec.get('group')}/{v.get('name')}", spec.get("names", {}).get("kind"))] = schema
    return out


def check_custom_resource(where: str, doc: dict, schema: dict, problems: Problems) -> None:
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    full = copy.deepcopy(schema)
    full.setdefault("properties", {})
    for k in ("apiVersion", "kind", "metadata"):
        full["properties"][k] = {"type": "object" if k == "metadata" else "string", "x-kubernetes-preserve-unknown-fields": True}
    validator = jsonschema.Draft202012Validator(json_schema_of(full))
    for e in sorted(validator.iter_errors({**body, "apiVersion": "", "kind": "", "metadata": {}}), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in e.path) or "(top)"
        problems.add(where, f"{doc['kind']} CRD schema (strict): {path}: {e.message}")


# === project rules ===


def pod_templates(doc: dict) -> Iterator[dict]:
    if doc.get("kind") in WORKLOAD_KINDS:
        yield doc["spec"]["template"]
    elif doc.get("kind") == "Pod":
        yield doc


def containers(pod_spec: dict) -> Iterator[dict]:
    yield from pod_spec.get("initContainers") or []
    yield from pod_spec.get("containers") or []


def image_name(image: str) -> str:
    repo = image.rsplit("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def image_is_nodeward(image: str) -> bool:
    return image_name(image) == "nodeward"


def image_is_dev_idp(image: str) -> bool:
    """The development IdP is its own image: the agent's never carries a token minter."""
    return image_name(image) == "nodeward-dev-idp"


def listen_port(args: list[str]) -> int | None:
    if "--listen" in args:
        i = args.index("--listen")
        if i + 1 < len(args):
            return int(args[i + 1].rsplit(":", 1)[1])
    return None


def check_container(where: str, c: dict, agent: dict | None, problems: Problems) -> None:
    here = f"{where} container {c.get('name')}"
    res = c.get("resources") or {}
    for section, key in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
        if key not in (res.get(section) or {}):
            problems.add(here, f"resources.{section}.{key} is not set")

    ports = c.get("ports") or []
    by_name = {p["name"]: p["containerPort"] for p in ports if "name" in p}
    numbers = {p["containerPort"] for p in ports}
    args = c.get("args") or []
    nodeward = image_is_nodeward(c.get("image", ""))
    dev_idp = image_is_dev_idp(c.get("image", ""))
    if nodeward and args[:1] == ["dev-idp"]:
        problems.add(here, "the agent's image has no dev IdP: use the nodeward-dev-idp image")
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = c.get(probe_name)
        if not probe:
            continue
        get = probe.get("httpGet")
        if get is None:
            continue
        port = get.get("port")
        if isinstance(port, str):
            if port not in by_name:
                problems.add(here, f"{probe_name} port {port!r} is not a named port of the container")
                continue
            port = by_name[port]
        elif port not in numbers:
            problems.add(here, f"{probe_name} port {port} is not declared in the container's ports")
        path = get.get("path", "/")
        if nodeward and args[:1] == ["run"]:
            if path not in AGENT_PATHS:
                problems.add(here, f"{probe_name} path {path} is not one the agent serves ({sorted(AGENT_PATHS)})")
            if agent is not None and port != agent["admin_port"]:
                problems.add(here, f"{probe_name} port {port} is not the config's admin port {agent['admin_port']}")
        elif dev_idp:
            if path not in DEV_IDP_PATHS:
                problems.add(here, f"{probe_name} path {path} is not one the dev IdP serves")
            if port != listen_port(args):
                problems.add(here, f"{probe_name} port {port} is not the dev IdP's --listen port")


def check_agent_pod(where: str, pod: dict, agent: dict | None, problems: Problems) -> None:
    spec = pod["spec"]
    if not spec.get("hostPID"):
        problems.add(where, "hostPID must be true (the agent opens /proc/<pid>/ns/net of pod processes)")
    if spec.get("hostNetwork"):
        problems.add(where, "hostNetwork must stay off (the agent enters pod namespaces with setns)")
    c = next(c for c in spec["containers"] if image_is_nodeward(c.get("image", "")))
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        problems.add(where, "the agent must not be privileged")
    if sc.get("allowPrivilegeEscalation", True):
        problems.add(where, "allowPrivilegeEscalation must be false")
    if not sc.get("readOnlyRootFilesystem"):
        problems.add(where, "readOnlyRootFilesystem must be true")
    caps = sc.get("capabilities") or {}
    if caps.get("drop") != ["ALL"]:
        problems.add(where, f"capabilities.drop must be [ALL], not {caps.get('drop')}")
    extra = set(caps.get("add") or []) - ALLOWED_CAPABILITIES
    if extra:
        problems.add(where, f"capabilities beyond {sorted(ALLOWED_CAPABILITIES)}: {sorted(extra)}")
    if agent is None:
        return
    annotations = pod["metadata"].get("annotations") or {}
    if annotations.get("prometheus.io/port") != str(agent["admin_port"]):
        problems.add(where, f"prometheus.io/port must be the admin port {agent['admin_port']}")
    ports = {p["containerPort"] for p in c.get("ports") or []}
    if agent["admin_port"] not in ports:
        problems.add(where, f"the admin port {agent['admin_port']} is not a declared containerPort")
    mounts = {PurePosixPath(m["mountPath"]): m for m in c.get("volumeMounts") or []}
    args = c.get("args") or []
    if "--config" not in args:
        problems.add(where, "the agent runs without --config")
    else:
        cfg = PurePosixPath(args[args.index("--config") + 1])
        mount = mounts.get(cfg.parent)
        volume = next((v for v in spec["volumes"] if mount and v["name"] == mount["name"]), None)
        if mount is None or volume is None or "configMap" not in volume:
            problems.add(where, f"--config {cfg}: its directory is not a ConfigMap volume mount")
        elif "subPath" in mount:
            problems.add(where, "the config mount uses subPath, which the kubelet never updates")
        elif volume["configMap"]["name"] != agent["configmap"] or cfg.name != agent["key"]:
            problems.add(where, f"--config {cfg} is not key {agent['key']} of ConfigMap {agent['configmap']}")
    for key, path, writable in agent["paths"]:
        covering = [m for p, m in mounts.items() if PurePosixPath(path) == p or p in PurePosixPath(path).parents]
        if not covering:
            problems.add(where, f"config {key}: {path} is not on a mounted volume")
        elif writable and covering[0].get("readOnly"):
            problems.add(where, f"config {key}: {path} is mounted read-only")
    env = {e["name"] for e in c.get("env") or []}
    if agent["k8s"].get("enabled") and not agent["k8s"].get("node_name") and "NODE_NAME" not in env:
        problems.add(where, "kubernetes.enabled without node_name needs the NODE_NAME environment variable")


def check_rbac(where: str, doc: dict, problems: Problems) -> None:
    granted: dict[tuple[str, str], set[str]] = {}
    granted_urls: set[str] = set()
    for rule in doc.get("rules") or []:
        if rule.get("nonResourceURLs"):
            urls = set(rule["nonResourceURLs"])
            if urls - ALLOWED_NON_RESOURCE_URLS:
                problems.add(where, f"nonResourceURLs granted: {sorted(urls - ALLOWED_NON_RESOURCE_URLS)}")
            if set(rule.get("verbs") or []) - {"get"}:
                problems.add(where, f"nonResourceURLs: verbs {sorted(set(rule['verbs']) - {'get'})} beyond ['get']")
            granted_urls.update(urls)
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                verbs = set(rule.get("verbs") or [])
                allowed = ALLOWED_RBAC.get((group, resource))
                if allowed is None:
                    problems.add(where, f"grants {sorted(verbs)} on {resource!r} in group {group!r}: not needed")
                    continue
                if verbs - allowed:
                    problems.add(
                        where, f"{resource!r} in {group!r}: verbs {sorted(verbs - allowed)} beyond {sorted(allowed)}"
                    )
                granted.setdefault((group, resource), set()).update(verbs)
    for key, verbs in REQUIRED_RBAC.items():
        if not verbs <= granted.get(key, set()):
            problems.add(where, f"the agent needs {sorted(verbs)} on {key[1]!r} in group {key[0]!r}")
    if ALLOWED_NON_RESOURCE_URLS - granted_urls:
        problems.add(where, f"the agent needs get on nonResourceURLs {sorted(ALLOWED_NON_RESOURCE_URLS - granted_urls)}")


def glob_matches(pattern: str, path: str) -> bool:
    """The agent's path globs: `*` one segment, `**` any number; `/a/**` also matches `/a`."""
    if pattern.endswith("/**") and path == pattern[:-3]:
        return True
    p_parts, s_parts = pattern.strip("/").split("/"), path.strip("/").split("/")

    def match(i: int, j: int) -> bool:
        if i == len(p_parts):
            return j == len(s_parts)
        if p_parts[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(s_parts) + 1))
        return j < len(s_parts) and fnmatch.fnmatchcase(s_parts[j], p_parts[i]) and match(i + 1, j + 1)

    return match(0, 0)


def identity_policies(docs: list[tuple[str, dict]]) -> list[dict]:
    return [d for _, d in docs if d.get("kind") == "IdentityPolicy"]


def check_opted_in(where: str, pod: dict, agent: dict, problems: Problems, namespaced: list[dict] | None = None) -> None:
    """An opted-in pod's probes go through nodeward: they must be let in
    anonymously by the policy that binds it, found as the agent finds it: the
    annotation (an IdentityPolicy of the pod's namespace, then the config's),
    else the one IdentityPolicy of its namespace that selects it, else the
    one config policy that does."""
    k8s = agent["k8s"]
    key, _, value = k8s.get("opt_in_label", "nodeward.io/enabled=true").partition("=")
    labels = pod["metadata"].get("labels") or {}
    if labels.get(key) != value:
        return
    annotation = (pod["metadata"].get("annotations") or {}).get(k8s.get("policy_annotation", "nodeward.io/policy"))
    policies = agent["config"].get("policies") or []
    ns = pod["metadata"].get("namespace")
    here = [
        {**(d.get("spec") or {}), "name": d["metadata"]["name"]}
        for d in namespaced or []
        if d["metadata"].get("namespace") == ns
    ]

    def selecting(candidates: list[dict]) -> list[dict]:
        return [p for p in candidates if all(labels.get(k) == v for k, v in (p.get("selector") or {}).items())]

    if annotation is not None:
        policy = next((p for p in here if p["name"] == annotation), None) or next(
            (p for p in policies if p.get("name") == annotation), None
        )
        if policy is None:
            problems.add(where, f"annotation names policy {annotation!r}, which neither {ns} nor the config has (deny-all)")
            return
    else:
        found = selecting(here) or selecting(policies)
        if len(found) != 1:
            why = "no policy selects its labels" if not found else f"{len(found)} policies select it (a conflict)"
            problems.add(where, f"opted in, but {why}: it would be enrolled deny-all")
            return
        policy = found[0]
    declared = {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []}
    protected = set(policy.get("ports") or []) | (declared if policy.get("container_ports") else set())
    for c in pod["spec"]["containers"]:
        by_name = {p["name"]: p["containerPort"] for p in c.get("ports") or [] if "name" in p}
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = (c.get(probe_name) or {}).get("httpGet")
            if get is None:
                continue
            port = by_name.get(get["port"], get["port"])
            if port not in protected:
                continue
            path = get.get("path", "/")
            rule = next(
                (
                    r
                    for r in policy.get("rules") or []
                    if (not r.get("paths") or any(glob_matches(g, path) for g in r["paths"]))
                    and (not r.get("methods") or "GET" in r["methods"])
                ),
                None,
            )
            if rule is None or rule.get("allow") != "anonymous":
                got = f"rule {rule.get('name')!r}" if rule else "no rule"
                problems.add(
                    where,
                    f"container {c['name']} {probe_name} GET {path} on protected port {port}: policy "
                    f"{policy['name']!r} answers with {got}, not `allow: anonymous`; the kubelet would get 401",
                )


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the `## ` headings of the runbooks."""
    anchors = set()
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", line[3:].strip().lower()).replace(" ", "-"))
    return anchors


def check_prometheus_rule(where: str, doc: dict, problems: Problems) -> None:
    anchors = runbook_anchors()
    for group in doc["spec"].get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert")
            if name is None:
                continue
            here = f"{where} alert {name}"
            if (rule.get("labels") or {}).get("severity") not in SEVERITIES:
                problems.add(here, f"labels.severity must be one of {sorted(SEVERITIES)}")
            notes = rule.get("annotations") or {}
            for key in ("summary", "description"):
                if not str(notes.get(key, "")).strip():
                    problems.add(here, f"annotations.{key} is empty")
            url = notes.get("runbook_url", "")
            want = f"docs/operations.md#{name.lower()}"
            if url != want:
                problems.add(here, f"annotations.runbook_url is {url!r}, not {want!r}")
            elif name.lower() not in anchors:
                problems.add(here, f"runbook {want}: no section `## {name}` in {RUNBOOKS}")
    plain = yaml.safe_load(RULES_FILE.read_text())
    if doc["spec"].get("groups") != plain.get("groups"):
        problems.add(where, f"spec.groups differs from {RULES_FILE} (run `cargo xtask observe --sync`)")


def check_dashboard_configmap(where: str, doc: dict, problems: Problems) -> None:
    if (doc["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
        problems.add(where, 'the dashboard ConfigMap lacks the label grafana_dashboard: "1" (the Grafana sidecar ignores it)')
    for key, text in (doc.get("data") or {}).items():
        try:
            dashboard = json.loads(text)
        except json.JSONDecodeError as e:
            problems.add(where, f"{key} is not JSON: {e}")
            continue
        if not dashboard.get("uid") or not dashboard.get("panels"):
            problems.add(where, f"{key}: a dashboard needs a uid and panels")
        if key == DASHBOARD_FILE.name and dashboard != json.loads(DASHBOARD_FILE.read_text()):
            problems.add(where, f"{key} differs from {DASHBOARD_FILE}")


# === main ===


def agent_config(docs: list[tuple[str, dict]], problems: Problems) -> dict | None:
    for where, doc in docs:
        if doc.get("kind") == "ConfigMap" and "config.yaml" in (doc.get("data") or {}):
            try:
                config = yaml.safe_load(doc["data"]["config.yaml"])
            except yaml.YAMLError as e:
                problems.add(where, f"config.yaml is not YAML: {e}")
                return None
            k8s = config.get("kubernetes") or {}
            admin = str(config.get("admin", "127.0.0.1:15020"))
            if admin.rsplit(":", 1)[0] in ("127.0.0.1", "[::1]", "localhost"):
                problems.add(where, f"admin {admin} is loopback-only: probes and Prometheus cannot reach it")
            return {
                "where": where,
                "configmap": doc["metadata"]["name"],
                "key": "config.yaml",
                "text": doc["data"]["config.yaml"],
                "config": config,
                "k8s": k8s,
                "admin_port": int(admin.rsplit(":", 1)[1]),
                "paths": [
                    ("state_dir", config.get("state_dir", "/var/lib/nodeward"), True),
                    ("ebpf.pin_dir", (config.get("ebpf") or {}).get("pin_dir", "/sys/fs/bpf/nodeward"), True),
                    ("kubernetes.cgroup_root", k8s.get("cgroup_root", "/sys/fs/cgroup"), False),
                ],
            }
    return None


def check_all(docs: list[tuple[str, dict]]) -> tuple[Problems, dict | None]:
    problems = Problems()
    try:
        agent = agent_config(docs, problems)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:
        problems.add("ConfigMap", f"the agent's config is malformed ({type(e).__name__}: {e})")
        agent = None
    if agent is None:
        problems.add("deploy/base", "no ConfigMap with the agent's config.yaml was rendered")
    service_ports = {p.get("name") for _, d in docs if d["kind"] == "Service" for p in d["spec"].get("ports") or []}
    agent_pod_ports: set[str] = set()
    agent_pod_labels: list[dict] = []
    service_labels = [d["metadata"].get("labels") or {} for _, d in docs if d["kind"] == "Service"]

    own_crds = crd_schemas(docs)
    for where, doc in docs:
        model = CRD_MODELS.get((doc.get("apiVersion"), doc.get("kind")))
        own = own_crds.get((doc.get("apiVersion"), doc.get("kind")))
        if model is not None:
            check_crd(where, doc, model, problems)
        elif own is not None:
            check_custom_resource(where, doc, own, problems)
        else:
            check_builtin(where, doc, problems)
        if doc.get("kind") == "CustomResourceDefinition" and doc.get("spec", {}).get("group") == "nodeward.io":
            for v in doc["spec"].get("versions") or []:
                check_structural(where, (v.get("schema") or {}).get("openAPIV3Schema"), "", problems)
        try:
            if doc.get("kind") in ("ClusterRole", "Role"):
                check_rbac(where, doc, problems)
            if doc.get("kind") == "PrometheusRule":
                check_prometheus_rule(where, doc, problems)
            if doc.get("kind") == "ConfigMap" and any(k.endswith(".json") for k in doc.get("data") or {}):
                check_dashboard_configmap(where, doc, problems)
            for pod in pod_templates(doc):
                for c in containers(pod["spec"]):
                    check_container(where, c, agent, problems)
                is_agent = any(
                    image_is_nodeward(c.get("image", "")) and (c.get("args") or [])[:1] == ["run"]
                    for c in pod["spec"]["containers"]
                )
                if is_agent:
                    check_agent_pod(where, pod, agent, problems)
                    agent_pod_ports |= {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports") or []}
                    agent_pod_labels.append(pod["metadata"].get("labels") or {})
                elif agent is not None:
                    ns = pod["metadata"].get("namespace") or doc["metadata"].get("namespace")
                    pod = {**pod, "metadata": {**pod["metadata"], "namespace": ns}}
                    check_opted_in(where, pod, agent, problems, identity_policies(docs))
        except (AttributeError, KeyError, TypeError, ValueError, StopIteration) as e:
            problems.add(where, f"malformed, project rules cannot be applied ({type(e).__name__}: {e})")

    for where, doc in docs:
        try:
            if doc.get("kind") in ("ServiceMonitor", "PodMonitor"):
                endpoints = doc["spec"].get("endpoints") or doc["spec"].get("podMetricsEndpoints") or []
                if not all(ep.get("honorLabels") for ep in endpoints):
                    problems.add(
                        where,
                        "every endpoint needs honorLabels: true (nodeward_kubernetes_pods' namespace/pod "
                        "would become exported_namespace/exported_pod)",
                    )
                want = (doc["spec"].get("selector") or {}).get("matchLabels") or {}
                targets = service_labels if doc["kind"] == "ServiceMonitor" else agent_pod_labels
                if not any(all(labels.get(k) == v for k, v in want.items()) for labels in targets):
                    what = "Service" if doc["kind"] == "ServiceMonitor" else "agent pod"
                    problems.add(where, f"selector {want} matches no rendered {what}")
            if doc.get("kind") == "ServiceMonitor":
                for ep in doc["spec"].get("endpoints") or []:
                    if ep.get("port") not in service_ports:
                        problems.add(where, f"endpoint port {ep.get('port')!r} is not a port of any rendered Service")
            if doc.get("kind") == "PodMonitor":
                for ep in doc["spec"].get("podMetricsEndpoints") or []:
                    if ep.get("port") not in agent_pod_ports:
                        problems.add(where, f"endpoint port {ep.get('port')!r} is not a named port of the agent's pods")
        except (AttributeError, KeyError, TypeError) as e:
            problems.add(where, f"malformed, project rules cannot be applied ({type(e).__name__}: {e})")
    return problems, agent


# === self-test: every check above can fail ===


def find(docs: list[tuple[str, dict]], kind: str, name: str | None = None) -> dict:
    return next(d for _, d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def agent_container(docs: list[tuple[str, dict]]) -> dict:
    return find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]


def edit_config(docs: list[tuple[str, dict]], edit: Any) -> None:
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap" and "config.yaml" in (d.get("data") or {}))
    config = yaml.safe_load(cm["data"]["config.yaml"])
    edit(config)
    cm["data"]["config.yaml"] = yaml.safe_dump(config)


def opted_in_container(docs: list[tuple[str, dict]]) -> dict:
    for _, d in docs:
        for pod in pod_templates(d):
            if (pod["metadata"].get("labels") or {}).get("nodeward.io/enabled") == "true":
                return pod["spec"]["containers"][0]
    raise LookupError("no opted-in pod rendered")


def _typo(c: dict) -> None:
    c["imagePulPolicy"] = c.pop("imagePullPolicy")


def _rbac_delete(docs: list[tuple[str, dict]]) -> None:
    find(docs, "ClusterRole")["rules"][0]["verbs"].append("delete")


def _rbac_secrets(docs: list[tuple[str, dict]]) -> None:
    find(docs, "ClusterRole")["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})


def _no_health_rule_in_identity_policy(docs: list[tuple[str, dict]]) -> None:
    spec = find(docs, "IdentityPolicy")["spec"]
    spec["rules"] = [r for r in spec["rules"] if r.get("allow") != "anonymous"]


def _crd_schema(docs: list[tuple[str, dict]]) -> dict:
    return find(docs, "CustomResourceDefinition")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _rbac_non_resource(docs: list[tuple[str, dict]]) -> None:
    for rule in find(docs, "ClusterRole")["rules"]:
        if rule.get("nonResourceURLs"):
            rule["nonResourceURLs"].append("/metrics")


def _rbac_no_sar(docs: list[tuple[str, dict]]) -> None:
    role = find(docs, "ClusterRole")
    role["rules"] = [r for r in role["rules"] if "subjectaccessreviews" not in r.get("resources", [])]


def _rbac_spec_writes(docs: list[tuple[str, dict]]) -> None:
    for rule in find(docs, "ClusterRole")["rules"]:
        if "identitypolicies/status" in rule.get("resources", []):
            rule["resources"].append("identitypolicies")


def prometheus_rule(docs: list[tuple[str, dict]]) -> dict:
    return find(docs, "PrometheusRule")["spec"]["groups"][0]["rules"][0]


def dashboard_configmap(docs: list[tuple[str, dict]]) -> dict:
    return next(d for _, d in docs if d["kind"] == "ConfigMap" and "nodeward.json" in (d.get("data") or {}))


MUTATIONS: list[tuple[str, Any, str]] = [
    (
        "a typo'd field in the DaemonSet",
        lambda d: _typo(agent_container(d)),
        "schema (strict): spec.template.spec.containers.0",
    ),
    (
        "a wrong type in a Service",
        lambda d: find(d, "Service")["spec"]["ports"][0].update(port="15020"),
        "schema (strict)",
    ),
    ("an unknown kind", lambda d: find(d, "Namespace").update(kind="Namespce"), "no schema"),
    (
        "a typo'd ServiceMonitor field",
        lambda d: find(d, "ServiceMonitor")["spec"]["endpoints"][0].update(pth="/x"),
        "CRD schema (strict)",
    ),
    (
        "a wrong type in a PodMonitor",
        lambda d: find(d, "PodMonitor")["spec"].update(podMetricsEndpoints="metrics"),
        "CRD schema (strict)",
    ),
    (
        "a container without a memory limit",
        lambda d: opted_in_container(d)["resources"]["limits"].pop("memory"),
        "limits.memory is not set",
    ),
    (
        "an agent probe on a path it does not serve",
        lambda d: agent_container(d)["readinessProbe"]["httpGet"].update(path="/ready"),
        "not one the agent serves",
    ),
    (
        "a probe on an undeclared port",
        lambda d: agent_container(d)["livenessProbe"]["httpGet"].update(port="metric"),
        "not a named port",
    ),
    ("an extra RBAC verb", _rbac_delete, "verbs ['delete']"),
    ("an extra RBAC resource", _rbac_secrets, "'secrets' in group '': not needed"),
    ("a non-resource URL beyond the issuer's", _rbac_non_resource, "nonResourceURLs granted: ['/metrics']"),
    ("no SubjectAccessReviews for the agent", _rbac_no_sar, "the agent needs ['create'] on 'subjectaccessreviews'"),
    (
        "an extra capability",
        lambda d: agent_container(d)["securityContext"]["capabilities"]["add"].append("SYS_MODULE"),
        "capabilities beyond",
    ),
    (
        "a privileged agent",
        lambda d: agent_container(d)["securityContext"].update(privileged=True),
        "must not be privileged",
    ),
    ("probes the policy refuses", _no_health_rule_in_identity_policy, "the kubelet would get 401"),
    (
        "a typo'd field in an IdentityPolicy",
        lambda d: find(d, "IdentityPolicy")["spec"].update(prots=[8080]),
        "IdentityPolicy CRD schema (strict): spec",
    ),
    (
        "a wrong type in an IdentityPolicy rule",
        lambda d: find(d, "IdentityPolicy")["spec"]["rules"][0].update(methods="GET"),
        "IdentityPolicy CRD schema (strict): spec.rules.0.methods",
    ),
    (
        "an untyped node in the CRD schema",
        lambda d: _crd_schema(d)["properties"]["spec"]["properties"]["ports"].pop("type"),
        "not structural: .spec.ports has no type",
    ),
    (
        "a union in the CRD schema",
        lambda d: _crd_schema(d)["properties"]["spec"]["properties"]["mode"].update(oneOf=[{"enum": ["audit"]}]),
        "not structural: .spec.mode uses oneOf",
    ),
    ("the agent writing IdentityPolicy specs", _rbac_spec_writes, "'identitypolicies' in 'nodeward.io': verbs ['patch']"),
    (
        "an opted-in pod no IdentityPolicy selects",
        lambda d: find(d, "IdentityPolicy")["spec"].update(selector={"app": "other"})
        or find(d, "Deployment", "echo")["spec"]["template"]["metadata"]["annotations"].clear(),
        "no policy selects its labels",
    ),
    (
        "a ServiceMonitor on a missing port",
        lambda d: find(d, "ServiceMonitor")["spec"]["endpoints"][0].update(port="metricz"),
        "not a port of any rendered Service",
    ),
    (
        "a PodMonitor on a missing port",
        lambda d: find(d, "PodMonitor")["spec"]["podMetricsEndpoints"][0].update(port="metricz"),
        "not a named port of the agent",
    ),
    (
        "a ServiceMonitor selecting nothing",
        lambda d: find(d, "ServiceMonitor")["spec"]["selector"]["matchLabels"].update(app="nodeward"),
        "matches no rendered Service",
    ),
    (
        "a PodMonitor selecting nothing",
        lambda d: find(d, "PodMonitor")["spec"]["selector"]["matchLabels"].update(app="nodeward"),
        "matches no rendered agent pod",
    ),
    (
        "a state_dir that is not mounted",
        lambda d: edit_config(d, lambda c: c.update(state_dir="/data")),
        "state_dir: /data is not on a mounted volume",
    ),
    (
        "a loopback admin address",
        lambda d: edit_config(d, lambda c: c.update(admin="127.0.0.1:15020")),
        "loopback-only",
    ),
    (
        "a typo'd PrometheusRule field",
        lambda d: prometheus_rule(d).update(exp=prometheus_rule(d).pop("expr")),
        "PrometheusRule CRD schema (strict)",
    ),
    (
        "an alert without a runbook",
        lambda d: prometheus_rule(d)["annotations"].pop("runbook_url"),
        "annotations.runbook_url is ''",
    ),
    (
        "an alert whose runbook section does not exist",
        lambda d: prometheus_rule(d).update(alert="NodewardNoSuchAlert")
        or prometheus_rule(d)["annotations"].update(runbook_url="docs/operations.md#nodewardnosuchalert"),
        "no section `## NodewardNoSuchAlert`",
    ),
    (
        "an alert without a severity",
        lambda d: prometheus_rule(d)["labels"].pop("severity"),
        "labels.severity must be one of",
    ),
    (
        "a PrometheusRule edited apart from the rules file",
        lambda d: prometheus_rule(d).update({"for": "1h"}),
        "spec.groups differs from",
    ),
    (
        "a dashboard ConfigMap the Grafana sidecar ignores",
        lambda d: dashboard_configmap(d)["metadata"]["labels"].pop("grafana_dashboard"),
        "lacks the label grafana_dashboard",
    ),
    (
        "a dashboard ConfigMap that is not the dashboard",
        lambda d: dashboard_configmap(d)["data"].update({"nodeward.json": '{"uid": "x", "panels": [1]}'}),
        "differs from deploy/monitoring/dashboard/nodeward.json",
    ),
    (
        "a broken dashboard JSON",
        lambda d: dashboard_configmap(d)["data"].update({"nodeward.json": "{"}),
        "nodeward.json is not JSON",
    ),
    (
        "a monitor without honorLabels",
        lambda d: find(d, "ServiceMonitor")["spec"]["endpoints"][0].pop("honorLabels"),
        "honorLabels: true",
    ),
    (
        "an admin port the probes miss",
        lambda d: edit_config(d, lambda c: c.update(admin="0.0.0.0:9090")),
        "not the config's admin port 9090",
    ),
]


def self_test(docs: list[tuple[str, dict]]) -> int:
    """Breaks the rendered manifests one way at a time; each must be caught."""
    problems, _ = check_all(docs)
    if problems.items:
        print("self-test needs manifests that pass first", file=sys.stderr)
        return 1
    missed = 0
    for what, mutate, expected in MUTATIONS:
        broken = copy.deepcopy(docs)
        mutate(broken)
        found, _ = check_all(broken)
        if any(expected in p for p in found.items):
            print(f"caught: {what}")
        else:
            missed += 1
            print(f"MISSED: {what}: expected a problem containing {expected!r}, got {found.items}", file=sys.stderr)
    if missed:
        print(f"self-test: {missed} of {len(MUTATIONS)} breakages not caught", file=sys.stderr)
        return 1
    print(f"self-test: all {len(MUTATIONS)} breakages caught")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered", nargs="+", type=Path, help="rendered kustomizations (multi-document YAML)")
    ap.add_argument("--config-out", type=Path, help="write the agent's config from the ConfigMap here")
    ap.add_argument("--identity-policies-out", type=Path, help="write the rendered IdentityPolicies here (for nodeward check)")
    ap.add_argument("--self-test", action="store_true", help="also prove that each check catches a breakage")
    args = ap.parse_args()

    docs: list[tuple[str, dict]] = []
    for f in args.rendered:
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                print(f"error: {f}: a document without apiVersion/kind: not a Kubernetes object", file=sys.stderr)
                return 1
            docs.append((f"{f.name}: {name_of(doc)}", doc))
    if not docs:
        print("error: no objects rendered", file=sys.stderr)
        return 1

    problems, agent = check_all(docs)
    if problems.items:
        for p in problems.items:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"{len(problems.items)} problem(s) in {len(docs)} objects", file=sys.stderr)
        return 1
    kinds = sorted({d["kind"] for _, d in docs})
    print(
        f"ok: {len(docs)} objects ({', '.join(kinds)}) valid against Kubernetes "
        f"{' and '.join(KUBERNETES_VERSIONS)} (strict), the Prometheus Operator CRD schema and nodeward's CRD "
        f"(structural, its custom resources strict); project rules hold"
    )
    if agent is not None and args.config_out is not None:
        args.config_out.write_text(agent["text"])
    if args.identity_policies_out is not None:
        args.identity_policies_out.write_text(yaml.safe_dump_all(identity_policies(docs), sort_keys=False))
    if args.self_test:
        return self_test(docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
