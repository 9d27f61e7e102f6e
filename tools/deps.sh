#!/usr/bin/env bash
# `make deps`: the system programs the tests run for real (Prometheus, promtool, amtool, Chromium,
# redis-server). Installs what is missing with apt when it can (root, or passwordless sudo);
# otherwise stops with one line saying what to install. Redis itself must answer on
# 127.0.0.1:6379 (started here if redis-server is installed and nothing answers).
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "make deps: missing ${need[*]}: run 'sudo apt-get install -y --no-install-recommends ${need[*]}' and retry" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "make deps: missing ${need[*]} and no apt-get here: install them with your package manager and retry" >&2
    exit 1
  fi
  echo "make deps: installing ${need[*]} with apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The Debian packages start services on :9090 and :9093; the tests run their own on free ports.
  if command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl stop prometheus prometheus-alertmanager 2>/dev/null || true
  fi
  "${sudo[@]}" pkill -x prometheus 2>/dev/null || true
  "${sudo[@]}" pkill -f "^/usr/bin/prometheus-alertmanager" 2>/dev/null || true
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if command -v redis-cli >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  else
    echo "make deps: no Redis answers on 127.0.0.1:6379: start one (redis-server --port 6379) and retry" >&2
    exit 1
  fi
fi
