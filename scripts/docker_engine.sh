#!/usr/bin/env bash
# A Docker engine for the r2e test service's docker runtime, on a machine that has none: .ci/run uses it, and so
# can you.
#
#   sudo scripts/docker_engine.sh start    # install docker.io when dockerd is missing, start dockerd, wait for it
#   sudo scripts/docker_engine.sh stop     # stop the dockerd that `start` started (an engine it found is left alone)
#   scripts/docker_engine.sh status        # exit 0 when an engine answers
#
# `start` does nothing when an engine already answers. Otherwise it needs root: it installs the Debian package
# docker.io with apt-get when no dockerd is on PATH, starts `dockerd` in the background (log and pid file in
# $ART_DOCKERD_DIR, default /tmp/art-dockerd; extra daemon flags from $ART_DOCKERD_ARGS) and waits up to
# $ART_DOCKERD_WAIT_S seconds (default 60) for it to answer. It exits non-zero with one line saying why when the
# engine cannot start; `stop` only ever stops the daemon whose pid it wrote.
# No registry is needed afterwards: `python -m envs.r2e images` builds the images offline.
set -uo pipefail

STATE_DIR="${ART_DOCKERD_DIR:-/tmp/art-dockerd}"
PID_FILE="$STATE_DIR/dockerd.pid"
LOG_FILE="$STATE_DIR/dockerd.log"
WAIT_S="${ART_DOCKERD_WAIT_S:-60}"

say() { echo "docker_engine: $*" >&2; }

answers() { command -v docker >/dev/null 2>&1 && timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

ours_running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

install_engine() {
  if command -v dockerd >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "no dockerd, and cannot install docker.io (needs root and apt-get)"; return 1
  fi
  say "installing docker.io (apt-get)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1 \
         || { apt-get update -qq >/dev/null 2>&1 \
              && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1; }; }; then
    say "apt-get install docker.io failed"; return 1
  fi
  command -v dockerd >/dev/null 2>&1 || { say "docker.io installed but no dockerd on PATH"; return 1; }
}

start() {
  if answers; then say "an engine already answers: using it"; return 0; fi
  if [ "$(id -u)" != 0 ]; then say "no engine answers, and starting dockerd needs root"; return 1; fi
  install_engine || return 1
  mkdir -p "$STATE_DIR"
  if ! ours_running; then
    # setsid: the daemon must outlive this script's process group (CI steps, Ctrl-C on a test run).
    # shellcheck disable=SC2086  # ART_DOCKERD_ARGS holds several flags
    setsid dockerd ${ART_DOCKERD_ARGS:-} >"$LOG_FILE" 2>&1 < /dev/null &
    echo $! > "$PID_FILE"
  fi
  local waited=0
  while [ "$waited" -lt "$WAIT_S" ]; do
    if answers; then say "dockerd answers (pid $(cat "$PID_FILE"), log $LOG_FILE) after ${waited} s"; return 0; fi
    if ! ours_running; then
      say "dockerd exited at start: $(tail -n 1 "$LOG_FILE" 2>/dev/null)"; rm -f "$PID_FILE"; return 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  say "dockerd did not answer within ${WAIT_S} s (log $LOG_FILE); stopping it"
  stop; return 1
}

stop() {
  if ! [ -f "$PID_FILE" ]; then say "no dockerd of ours to stop"; return 0; fi
  local pid; pid="$(cat "$PID_FILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then say "dockerd (pid $pid) ignored TERM for 30 s: killing it"; kill -KILL "$pid"; fi
  fi
  rm -f "$PID_FILE"; say "dockerd (pid $pid) stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then say "an engine answers"; else say "no engine answers"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
