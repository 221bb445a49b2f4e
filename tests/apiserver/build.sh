#!/usr/bin/env bash
# Builds the pinned kube-apiserver and etcd from tests/apiserver/recipe/go.mod through the Go module
# proxy, into a cache folder kept outside the checkout, and prints the folder holding both binaries.
# A second run with the same recipe only checks that the binaries exist (seconds); progress goes to
# stderr so callers can capture the printed folder. With --check it never builds: exit 3 when the
# binaries of this recipe are not in the cache.
#
# Cache folder: $LLMROUTE_APISERVER_CACHE, default ~/.cache/llmroute-apiserver. It holds the Go
# build cache (go-build/), the module cache (go-mod/) and one bin/<recipe hash>/ per recipe.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
recipe="$here/recipe"
cache="${LLMROUTE_APISERVER_CACHE:-$HOME/.cache/llmroute-apiserver}"
k8s_version="$(sed -n 's#^\tk8s.io/kubernetes \(v[0-9.]*\).*#\1#p' "$recipe/go.mod")"
k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
key="$(cat "$recipe/go.mod" "$recipe/go.sum" "$0" | sha256sum | cut -c1-16)"
bin="$cache/bin/$key"
log() { echo "[apiserver build] $*" >&2; }

if [[ -x "$bin/kube-apiserver" && -x "$bin/etcd" ]]; then
    log "cached: kube-apiserver $k8s_version and etcd in $bin"
    echo "$bin"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    log "not built yet for this recipe: bash $0"
    exit 3
fi
[[ -x /usr/local/go/bin/go ]] && PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { log "go is not installed; the build needs Go >= 1.25"; exit 1; }

export GOCACHE="$cache/go-build" GOMODCACHE="$cache/go-mod" GOFLAGS="-trimpath -mod=readonly"
export CGO_ENABLED=0 GOTOOLCHAIN=local  # static binaries, as Kubernetes releases build them
cd "$recipe"
start=$SECONDS
log "downloading modules for kube-apiserver $k8s_version (go $(go env GOVERSION))"
go mod download
total="$(go list -deps k8s.io/kubernetes/cmd/kube-apiserver go.etcd.io/etcd/server/v3 | wc -l)"
log "compiling up to $total packages with -p 2 (a cold build took 7 min on a 2-core machine)"
version_pkg=k8s.io/component-base/version
ldflags="-s -w -X $version_pkg.gitVersion=$k8s_version -X $version_pkg.gitMajor=1"
ldflags+=" -X $version_pkg.gitMinor=$k8s_minor -X $version_pkg.gitTreeState=clean"
tmp="$cache/bin/.tmp-$key-$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
# -v names each package as it is compiled (cached ones are not named): count them as progress.
progress() {
    local n=0 line t0=$SECONDS
    while IFS= read -r line; do
        case "$line" in
            "go: "* | "#"* | *.go:*) echo "$line" >&2 ;;
            *) n=$((n + 1)); ((n % 100)) || log "compiled $n of at most $total packages, $((SECONDS - t0)) s" ;;
        esac
    done
    log "compiled $n packages"
}
go build -v -p 2 -ldflags="$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver go.etcd.io/etcd/server/v3 2>&1 | progress
mv "$tmp/server" "$tmp/etcd"
rm -rf "$bin"
mv "$tmp" "$bin"
trap - EXIT
log "built kube-apiserver $k8s_version and etcd into $bin in $((SECONDS - start)) s"
echo "$bin"
