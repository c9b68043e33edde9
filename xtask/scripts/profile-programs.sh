#!/bin/sh
# What each of tcptrace's BPF programs costs under loopback churn, by kernel.bpf_stats_enabled,
# and the tracer's CPU ticks meanwhile. Run it here (as root, with bpftool installed) or inside
# the VM tier's stock kernel:
#
#   cargo build --release -p tcptrace && cargo build -p xtask
#   cargo xtask vm-run --file $PWD/target/release/tcptrace --file $PWD/target/debug/xtask \
#       --file /usr/sbin/bpftool -- $PWD/xtask/scripts/profile-programs.sh $PWD 15 leaks --stacks off
#
# Arguments: the repository root, seconds of churn, then tcptrace's arguments. Where the clock
# is jiffies-based (the VM: no TSC under emulation), run_time_ns is a sum of 4 ms ticks: use
# runs of 10 s or more and compare totals, not single runs.
set -eu
root=$1 seconds=$2
shift 2
err=$(mktemp)
echo 1 > /proc/sys/kernel/bpf_stats_enabled
"$root/target/release/tcptrace" "$@" > /dev/null 2> "$err" &
tracer=$!
for _ in $(seq 300); do grep -q "tcptrace: tracing" "$err" && break; sleep 0.2; done
sleep 1
ticks() { awk '{ print $14 + $15 }' "/proc/$tracer/stat"; }
before=$(ticks)
"$root/target/debug/xtask" churn --threads 2 --seconds "$seconds"
echo "tracer CPU during churn: $(( $(ticks) - before )) ticks"
bpftool prog show | awk '/run_time_ns/ {
    for (i = 1; i <= NF; i++) {
        if ($i == "name") n = $(i + 1)
        if ($i == "run_time_ns") t = $(i + 1)
        if ($i == "run_cnt") c = $(i + 1)
    }
    printf "%-26s %9d runs %8.2f us/run %8.1f ms\n", n, c, t / c / 1000, t / 1e6
}'
kill -INT "$tracer"
wait "$tracer" || true
echo 0 > /proc/sys/kernel/bpf_stats_enabled
cat "$err"
rm -f "$err"
