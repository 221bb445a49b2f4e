#!/usr/bin/env bash
# Runs a real kube-apiserver and etcd on loopback in the foreground, as envtest does: no nodes, no
# controllers. Usage: bash tests/apiserver/run.sh KUBECONFIG_OUT
#
# Builds both when needed (tests/apiserver/build.sh), makes a throw-away CA, serving and admin
# client certificates and a service-account signing key (so TokenRequest and TokenReview work),
# starts etcd and kube-apiserver on free loopback ports, writes an admin kubeconfig (group
# system:masters) to KUBECONFIG_OUT and prints `ready` once /readyz answers. SIGTERM or SIGINT
# stops both and removes their data. Logs go to $LLMROUTE_APISERVER_LOGS (default: the temporary
# state folder, printed on failure).
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 KUBECONFIG_OUT" >&2; exit 2; }
kubeconfig_out="$1"
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(bash "$here/build.sh")"
state="$(mktemp -d "${TMPDIR:-/tmp}/llmroute-apiserver.XXXXXX")"
logs="${LLMROUTE_APISERVER_LOGS:-$state}"
mkdir -p "$logs"
pids=()

stop() {  # the API server first (it needs etcd to shut down cleanly), then etcd; KILL after 20 s each
    local i pid
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in {1..40}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
    rm -rf "$state"
}
trap 'stop; exit 0' TERM INT
trap 'stop' EXIT

fail() {
    echo "run.sh: $1" >&2
    for log in "$logs"/etcd.log "$logs"/kube-apiserver.log; do
        [[ -f "$log" ]] && { echo "--- last lines of $log" >&2; tail -n 30 "$log" >&2; }
    done
    exit 1
}

# --- certificates: one CA signs the serving certificate and the admin's client certificate
pki="$state/pki"
mkdir -p "$pki"
(
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=llmroute-test-ca \
        -keyout ca.key -out ca.crt 2>/dev/null
    sign() {  # sign NAME SUBJECT EXTENSIONS
        openssl req -new -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
        openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile <(printf '%s\n' "$3") -out "$1.crt" 2>/dev/null
    }
    sign serving /CN=kube-apiserver "subjectAltName=IP:127.0.0.1,DNS:localhost"
    sign admin "/O=system:masters/CN=llmroute-test-admin" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)

read -r etcd_port etcd_peer_port api_port < <(python3 "$here/../ports.py" 3)

"$bin/etcd" --name llmroute-test --data-dir "$state/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "llmroute-test=http://127.0.0.1:$etcd_peer_port" >"$logs/etcd.log" 2>&1 &
pids+=($!)

"$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/serving.crt" --tls-private-key-file "$pki/serving.key" \
    --client-ca-file "$pki/ca.crt" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none \
    --allow-privileged=true --cert-dir "$state/certs" >"$logs/kube-apiserver.log" 2>&1 &
pids+=($!)

curl_api() {
    curl -sf --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "https://127.0.0.1:$api_port$1"
}
deadline=$((SECONDS + ${LLMROUTE_APISERVER_START_TIMEOUT:-300}))
until curl_api /readyz >/dev/null 2>&1; do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a server exited before it was ready"; done
    ((SECONDS < deadline)) || fail "kube-apiserver was not ready within ${LLMROUTE_APISERVER_START_TIMEOUT:-300} s"
    sleep 0.5
done

b64() { base64 -w0 "$1"; }
tmp_config="$kubeconfig_out.tmp.$$"
cat >"$tmp_config" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: llmroute-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: llmroute-test-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: llmroute-test
  context: {cluster: llmroute-test, user: llmroute-test-admin, namespace: default}
current-context: llmroute-test
EOF
chmod 600 "$tmp_config"
mv "$tmp_config" "$kubeconfig_out"
echo ready

# Serve until told to stop; a server that dies on its own ends the run with an error.
wait -n "${pids[@]}" || true
fail "a server exited on its own"
