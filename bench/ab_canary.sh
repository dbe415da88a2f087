#!/usr/bin/env bash
# The ASGI canary path of two revisions, side by side: wrk against CanaryRouter (every request
# to the canary) built from REV_A and from REV_B (default: the working tree), both in front of
# the same canary, in alternating runs so whatever else the machine does hits both alike.
#
#   bash bench/ab_canary.sh HEAD~1            # HEAD~1 against the working tree, c50
#   bash bench/ab_canary.sh v1 v2 10          # two revisions, 10 connections
#
# Run it in the project's virtualenv (the test extra brings uvicorn, uvloop and httptools);
# needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
rev_a=${1:?usage: bash bench/ab_canary.sh REV_A [REV_B|worktree] [CONNECTIONS]}
rev_b=${2:-worktree}
connections=${3:-50}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; git worktree remove --force "$work/a" >/dev/null 2>&1 || true; [ "$rev_b" = worktree ] || git worktree remove --force "$work/b" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach -f "$work/a" "$rev_a" >/dev/null
if [ "$rev_b" = worktree ]; then dir_b=$PWD; else git worktree add --detach -f "$work/b" "$rev_b" >/dev/null; dir_b=$work/b; fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
canary=$(free_port); port_a=$(free_port); port_b=$(free_port)
export BENCH_ROUTER="{\"store\": \"memory://\", \"canary_url\": \"http://127.0.0.1:$canary\", \"rollouts\": false,
  \"default_rules\": [{\"id\": \"all\", \"when\": {\"path_prefix\": \"/\"}, \"target\": \"canary\"}]}"
serve() {  # serve DIR APP PORT [--factory]: uvicorn with httptools and uvloop
    (cd "$1" && exec python -m uvicorn "$2" --port "$3" ${4:-} --log-level warning \
        --http httptools --loop uvloop --no-access-log) &
    pids+=($!)
}
serve "$dir_b" bench.apps:backend "$canary"
serve "$work/a" bench.apps:router "$port_a" --factory
serve "$dir_b" bench.apps:router "$port_b" --factory
for port in "$canary" "$port_a" "$port_b"; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done
for port in "$port_a" "$port_b"; do wrk -t2 -c"$connections" -d2s "http://127.0.0.1:$port/" >/dev/null; done
cpu_ticks() {  # user + system CPU of the process behind a port, in clock ticks
    local pid
    pid=$(ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
    awk '{print $14 + $15}' "/proc/$pid/stat"
}
measure() {  # measure PORT: "req/s router-CPU-µs-per-request"
    local before after out
    before=$(cpu_ticks "$1")
    out=$(wrk -t2 -c"$connections" -d4s "http://127.0.0.1:$1/")
    after=$(cpu_ticks "$1")
    python3 - "$out" "$before" "$after" <<'PY'
import os, re, sys
out, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
requests = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
print(rps, (after - before) / os.sysconf("SC_CLK_TCK") / requests * 1e6)
PY
}
echo "c$connections: A = $rev_a, B = $rev_b (router CPU per request: the router process only)"
for run in 1 2 3 4 5; do
    read -r a_rps a_cpu <<<"$(measure "$port_a")"
    read -r b_rps b_cpu <<<"$(measure "$port_b")"
    python3 -c "print(f'run $run: req/s A {$a_rps:7.0f} B {$b_rps:7.0f} (B/A {$b_rps/$a_rps:.2f});  CPU µs/req A {$a_cpu:5.1f} B {$b_cpu:5.1f} (B/A {$b_cpu/$a_cpu:.2f})')"
done
