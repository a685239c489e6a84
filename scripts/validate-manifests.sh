#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests in deploy/ (CI runs it from
# .ci/run; run it by hand the same way):
#   1. render every kustomization with `kubectl kustomize`;
#   2. scripts/validate-manifests.py: strict Kubernetes OpenAPI schemas, the
#      Prometheus Operator CRD schema for the monitors, and the project's rules
#      (resources, probes, RBAC, capabilities, config paths), then a self-test
#      that breaks the manifests one way at a time and sees each caught;
#   3. `cargo xtask crds --check`: the committed CRD is what the code generates;
#   4. `nodeward check` on the agent config held in the ConfigMap, and on the
#      example IdentityPolicies against it.
# Installs what it needs when missing: kubectl (Debian's kubernetes-client) and
# a Python venv with pinned packages under target/. Fails loudly on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/manifests
venv=target/manifests-venv
req=scripts/validate-manifests.requirements.txt

if ! command -v kubectl >/dev/null; then
  echo "kubectl missing: installing Debian's kubernetes-client"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client
fi
echo "kubectl: $(kubectl version --client 2>/dev/null | head -n 1)"

if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  echo "creating $venv (pinned: $req)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req"
  "$venv/bin/pip" check
  cp "$req" "$venv/requirements.txt"
fi

rm -rf "$out"
mkdir -p "$out"
rendered=()
while IFS= read -r k; do
  dir=$(dirname "$k")
  name=$(echo "${dir#deploy/}" | tr '/' '-')
  if ! kubectl kustomize "$dir" >"$out/$name.yaml" 2>"$out/$name.err"; then
    echo "FAIL kubectl kustomize $dir:" >&2
    cat "$out/$name.err" >&2
    exit 1
  fi
  if [ -s "$out/$name.err" ]; then
    # Deprecation warnings from newer kustomize: the manifests must stay clean.
    echo "FAIL kubectl kustomize $dir printed warnings:" >&2
    cat "$out/$name.err" >&2
    exit 1
  fi
  echo "rendered $dir -> $out/$name.yaml ($(grep -c '^kind:' "$out/$name.yaml") objects)"
  rendered+=("$out/$name.yaml")
done < <(find deploy -name kustomization.yaml | sort)
[ "${#rendered[@]}" -gt 0 ] || { echo "FAIL: no kustomization found under deploy/" >&2; exit 1; }

"$venv/bin/python" scripts/validate-manifests.py --self-test --config-out "$out/config.yaml" \
  --identity-policies-out "$out/identitypolicies.yaml" "${rendered[@]}"

# The committed CRD must be what the agent's Rust types generate.
cargo xtask crds --check

# The Dockerfile cannot be built here (no registry access for base images):
# check that what it copies from the build context exists and is not
# excluded by .dockerignore, and lint it when hadolint is at hand.
"$venv/bin/python" - <<'PY'
import fnmatch, re, shlex, sys, tomllib
from pathlib import Path
ignore = [l.strip() for l in Path(".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
def ignored(path: str) -> bool:
    parts = Path(path).parts
    return any(
        fnmatch.fnmatch(path, pat.removeprefix("**/")) or fnmatch.fnmatch(path, pat)
        or any(fnmatch.fnmatch(part, pat.removeprefix("**/")) for part in parts)
        for pat in ignore
    )
problems = []
text = Path("Dockerfile").read_text().replace("\\\n", " ")
for line in text.splitlines():
    if line.split(maxsplit=1)[:1] not in (["COPY"], ["ADD"]):
        continue
    words = shlex.split(line, comments=True)
    if any(w.startswith("--from") for w in words):
        continue
    sources = [w for w in words[1:-1] if not w.startswith("--")]
    for src in sources:
        if src != "." and (not Path(src).exists() or ignored(src)):
            problems.append(f"Dockerfile: {line.strip()}: {src} is missing or excluded by .dockerignore")
# cargo needs every workspace member's manifest, even to build one package
members = tomllib.loads(Path("Cargo.toml").read_text())["workspace"]["members"]
for m in members + ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"]:
    manifest = m if m.endswith((".toml", ".lock")) else f"{m}/Cargo.toml"
    if ignored(manifest) or ignored(m):
        problems.append(f".dockerignore excludes {m}, which the workspace build needs")
if "cargo build --profile dist --locked -p nodeward" not in text or 'ENTRYPOINT ["/nodeward"]' not in text:
    problems.append("Dockerfile: expected `cargo build --profile dist --locked -p nodeward` and ENTRYPOINT [\"/nodeward\"]")
# The default (last) stage is the agent's image, and it carries no token minter.
last_stage = text.split("\nFROM ")[-1]
if 'ENTRYPOINT ["/nodeward"]' not in last_stage or "dev-idp" in last_stage:
    problems.append("Dockerfile: the last (default) stage must be the agent alone, without the dev IdP")
for p in problems:
    print(f"FAIL {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print("Dockerfile: copied paths exist and the workspace is in the build context")
PY
if command -v hadolint >/dev/null; then hadolint Dockerfile; else echo "hadolint not installed (not in Debian): Dockerfile not linted"; fi

# The agent's config must pass the agent's own validation. A build without the
# Kubernetes pod watch refuses any `kubernetes:` section beyond `enabled: false`:
# probe for it, and say so loudly rather than pass or fail on the wrong grounds.
nodeward() { cargo run -q -p nodeward -- "$@"; }
probe=$(mktemp)
trap 'rm -f "$probe"' EXIT
cat >"$probe" <<'YAML'
kubernetes:
  enabled: true
  node_name: probe
  policy_annotation: nodeward.io/policy
  proc_root: /proc
  cgroup_root: /sys/fs/cgroup
YAML
if nodeward check --config "$probe" >/dev/null 2>&1; then
  # The DaemonSet sets NODE_NAME from spec.nodeName (the python checks verify that).
  echo "NODE_NAME=validate-manifests nodeward check --config $out/config.yaml (the ConfigMap's config)"
  if ! NODE_NAME=validate-manifests nodeward check --config "$out/config.yaml" >"$out/config.effective.yaml"; then
    echo "FAIL: the ConfigMap's config does not pass nodeward check (above)" >&2
    exit 1
  fi
  # The example IdentityPolicies, through the agent's own parser (what the
  # CRD's CEL rules cannot say offline: unknown providers, bad globs, ...).
  echo "nodeward check --config $out/config.yaml --identity-policy $out/identitypolicies.yaml"
  if ! NODE_NAME=validate-manifests nodeward check --config "$out/config.yaml" --identity-policy "$out/identitypolicies.yaml"; then
    echo "FAIL: an IdentityPolicy of deploy/ does not pass nodeward check (above)" >&2
    exit 1
  fi
else
  echo "WARNING: this nodeward build has no Kubernetes pod watch (it refuses the contract's" >&2
  echo "WARNING: kubernetes keys), so the ConfigMap's config cannot be checked in full yet." >&2
  echo "WARNING: Checking it without its kubernetes section instead; the full check runs" >&2
  echo "WARNING: by itself once the pod watch is in the build." >&2
  "$venv/bin/python" - "$out/config.yaml" "$out/config.no-kubernetes.yaml" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config.pop("kubernetes", None)
for policy in config.get("policies") or []:
    policy.pop("container_ports", None)
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
PY
  if ! nodeward check --config "$out/config.no-kubernetes.yaml" >"$out/config.effective.yaml"; then
    echo "FAIL: the ConfigMap's config (without its kubernetes section) does not pass nodeward check" >&2
    exit 1
  fi
fi
echo "manifests: ok"
