#!/usr/bin/env bash
# W1 through 1, 2 and 3 weir processes sharing one stream with an MQTT
# shared subscription ($share/weir/sensors/+/telemetry) on one loopback
# mosquitto: the max input rate and the output rate, per process count,
# with the C reference processor (one process) measured in the same run
# as the baseline. Uses the harness in ../shared/bench/ (w1bench, its
# broker settings). Run from the project root after
# `cargo build --release -p weir` and `cargo xtask modules`:
#   bash benches/share.sh            (QOS=0|1, N=messages per run)
set -u
ROOT="$PWD"
export SCRATCH="${SCRATCH:-/tmp/weir-share}" BROKER_PORT="${BROKER_PORT:-18861}"
source "$ROOT/../shared/bench/common.sh"
QOS="${QOS:-1}"; N="${N:-60000}"; PORT="$BROKER_PORT"
WEIR="${WEIR:-$ROOT/target/release/weir}"
build_w1bench
gcc -O2 -o "$SCRATCH/proc_c" "$PEERS_DIR/proc_c.c" -lmosquitto -lm || exit 1

config() { # id -> config path
  local d="$SCRATCH/$1"; rm -rf "$d"; mkdir -p "$d"
  sed -e "s#^id = .*#id = \"$1\"#" -e "s#^modules_dir = .*#modules_dir = \"$ROOT/target/modules\"#" \
    "$ROOT/pipelines/w1.toml" > "$d/weir.toml"
  cat >> "$d/weir.toml" <<CFG

[store]
path = "$d/store"

[[source]]
type = "mqtt"
name = "sensors"
host = "127.0.0.1"
port = $PORT
version = 4
subscribe = [ { filter = "\$share/weir/sensors/+/telemetry", qos = $QOS } ]

[[sink]]
name = "cloud"
type = "mqtt"
host = "127.0.0.1"
port = $PORT
topic = "cloud/gw1/telemetry"
CFG
  echo "$d/weir.toml"
}

# run LABEL N_PROCS CMD... : start the processes, drive w1bench at max rate
run() {
  local label="$1" procs="$2"; shift 2
  start_broker "$PORT"
  local pids=()
  for i in $(seq "$procs"); do
    "$@" "$i" > "$SCRATCH/$label-$i.log" 2>&1 &
    pids+=($!); STARTED_PIDS+=($!)
  done
  sleep 1.5
  "$W1BENCH" -m w1 -n 3000 -r 3000 -s 100 -w 1 -p "$PORT" -q "$QOS" -Q "$QOS" > /dev/null
  local c0=0 c1=0 p
  for p in "${pids[@]}"; do c0=$((c0 + $(cpu_ticks "$p"))); done
  local out; out=$("$W1BENCH" -m w1 -n "$N" -r 0 -s 100 -w 10 -p "$PORT" -q "$QOS" -Q "$QOS" | grep '^RESULT')
  for p in "${pids[@]}"; do c1=$((c1 + $(cpu_ticks "$p"))); done
  local b; b=$(cpu_ticks "$BROKER_PID")
  printf '%-14s %5s %10s %10s %6s %14s\n' "$label" "$procs" \
    "$(echo "$out" | sed -E 's/.*in_per_s=([0-9]+).*/\1/')" \
    "$(echo "$out" | sed -E 's/.*out_per_s=([0-9]+).*/\1/')" \
    "$(echo "$out" | sed -E 's/.*lost=([0-9]+).*/\1/')" \
    "$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" -v n="$N" 'BEGIN{printf "%.1f", 1e6*(b-a)/hz/n}')"
  cleanup
}
weir_n() { exec "$WEIR" serve --config "$(config "gw$1")"; }
c_ref() { exec "$SCRATCH/proc_c" "$PORT" "$QOS"; }
printf '%-14s %5s %10s %10s %6s %14s\n' "QoS $QOS" procs "in msgs/s" "out/s" lost "CPU us/msg"
run "C reference" 1 c_ref
for n in 1 2 3; do run weir "$n" weir_n; done
