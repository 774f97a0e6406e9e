#!/usr/bin/env bash
# Run a command against a real two-node Ray cluster on 127.0.0.1, in private network and PID namespaces:
#   bash tests/ray_cluster.sh PORT COMMAND...
# The network namespace has only a loopback interface, so no Ray traffic can reach any address but 127.0.0.1 (Ray
# would otherwise pick the machine's interface address even with --node-ip-address 127.0.0.1). In the PID namespace
# (with its own /proc) `ray stop` sees only this cluster's processes, not another Ray on the machine, and when this
# script ends for any reason (even SIGKILL of unshare: --kill-child) the kernel kills whatever is left in it, so no
# Ray outlives it to make the next `ray start` on that port fail with "already running". Both nodes have 1 CPU;
# the second also has the custom resource `hc_worker`, so a test can find (and kill) it.
set -euo pipefail
if [[ -z ${HC_RAY_NAMESPACE:-} ]]; then
  exec unshare --net --pid --fork --mount-proc --kill-child env HC_RAY_NAMESPACE=1 bash "$0" "$@"
fi
port=$1
shift
RAY=${RAY:-ray}
export RAY_USAGE_STATS_ENABLED=0
# Ray 2.60 turns token authentication on; inside this private namespace it is off (see docs/gpu-cluster.md for a
# real cluster's shared token).
export RAY_AUTH_MODE=disabled
# Notice a dead node within ~2 s instead of Ray's default ~30 s (the kill test waits on it).
export RAY_health_check_period_ms=500 RAY_health_check_timeout_ms=1000 RAY_health_check_failure_threshold=3
trap '"$RAY" stop --force >/dev/null 2>&1 || true' EXIT
ip link set lo up
"$RAY" start --head --port "$port" --num-cpus 1 --include-dashboard=false --disable-usage-stats >"${RAY_LOG:-/dev/null}" 2>&1
"$RAY" start --address "127.0.0.1:$port" --num-cpus 1 --resources '{"hc_worker": 1}' --disable-usage-stats \
  >>"${RAY_LOG:-/dev/null}" 2>&1
"$@"
