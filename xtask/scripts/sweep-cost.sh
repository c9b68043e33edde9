#!/bin/sh
# What `leaks`' inventory sweeps cost on a host holding many TIME_WAIT sockets and many network
# namespaces: each sweep dumps every namespace with sock_diag, and each dump walks the
# host-wide established hash (TIME_WAIT sockets included, though the dump leaves them out)
# unless net.ipv4.tcp_child_ehash_entries gave the namespace a table of its own. Run as root:
#
#   cargo build --release -p tcptrace
#   xtask/scripts/sweep-cost.sh $PWD 100000 32 20 1s
#
# Arguments: the repository root, TIME_WAIT sockets to make (in a namespace of their own),
# further empty namespaces, seconds to measure, the sweep interval. Prints the tracer's CPU over
# that time, how many sweeps the run made, and the report's word on their spacing.
set -eu
root=$1 timewait=$2 namespaces=$3 seconds=$4 sweep=$5
prefix=ttsweep$$
cleanup() {
    [ -n "${tracer:-}" ] && kill "$tracer" 2> /dev/null || true
    for ns in $(ip netns list | awk -v p="$prefix" 'index($1, p) == 1 { print $1 }'); do
        ip netns delete "$ns"
    done
}
trap cleanup EXIT INT TERM

ip netns add "${prefix}tw"
ip -n "${prefix}tw" link set lo up
i=0
while [ "$i" -lt "$namespaces" ]; do
    i=$((i + 1))
    ip netns add "$prefix$i"
    ip -n "$prefix$i" link set lo up
done

# The client closes first, so its side waits in TIME_WAIT, toward a listening port per thousand
# sockets in turn: few sockets per destination keep connect()'s search for a free port short.
ip netns exec "${prefix}tw" python3 - "$timewait" << 'EOF'
import socket, sys
want = int(sys.argv[1])
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("1024 65535")
with open("/proc/sys/net/ipv4/tcp_max_tw_buckets", "w") as f:
    f.write(str(want + 65536))
# 2 (the default) lets a connect() on loopback take over a TIME_WAIT port, ending that socket.
with open("/proc/sys/net/ipv4/tcp_tw_reuse", "w") as f:
    f.write("0")
listeners = []
for n in range(want // 1000 + 1):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 7000 + n))
    s.listen(1024)
    listeners.append(s)
for i in range(want):
    listener = listeners[i % len(listeners)]
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    client.close()
    server.close()
EOF
held=$(ip netns exec "${prefix}tw" ss -Htan state time-wait | wc -l)

err=$(mktemp) out=$(mktemp)
"$root/target/release/tcptrace" leaks --json --sweep "$sweep" --stacks off > "$out" 2> "$err" &
tracer=$!
for _ in $(seq 300); do grep -q "tcptrace: tracing" "$err" && break; sleep 0.1; done
ticks() { awk '{ print $14 + $15 }' "/proc/$tracer/stat"; }
# From the end of the start's inventory: the tracer is idle but for its sweeps (nothing
# connects while it runs).
before=$(ticks)
sleep "$seconds"
spent=$(( $(ticks) - before ))
kill -INT "$tracer"
wait "$tracer" || true
tracer=
hz=$(getconf CLK_TCK)
echo "$held TIME_WAIT sockets, $((namespaces + 1)) namespaces besides the host's, --sweep $sweep:"
awk -v t="$spent" -v hz="$hz" -v s="$seconds" 'BEGIN {
    printf "  tracer CPU %.2f s in %d s (%.1f%% of a CPU)\n", t / hz, s, 100 * t / hz / s
}'
python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("  sweeps in the run, start and end included:", r["sweeps"])
for w in r["warnings"]:
    if "sweep" in w:
        print("  " + w)' "$out"
