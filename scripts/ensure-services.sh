#!/usr/bin/env bash
# Makes sure the services the tests talk to are up on 127.0.0.1: PostgreSQL
# (5432), Redis (6379), RabbitMQ (5672) with its management plugin (15672).
# Starts (and, where missing, installs) only what is down; never stops anything.
set -euo pipefail

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {  # name port seconds
  for _ in $(seq "$3"); do port_open "$2" && return 0; sleep 1; done
  echo "$1 did not come up on 127.0.0.1:$2 within $3 s" >&2
  return 1
}

install_if_missing() {  # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2"
}

if ! port_open 5432; then
  install_if_missing pg_ctlcluster postgresql
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for_port PostgreSQL 5432 30
fi

if ! port_open 6379; then
  install_if_missing redis-server redis-server
  $sudo mkdir -p /var/lib/redis /var/log/redis
  $sudo redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for_port Redis 6379 15
fi

if ! port_open 5672; then
  install_if_missing rabbitmq-server rabbitmq-server
  $sudo rabbitmq-server -detached
  wait_for_port RabbitMQ 5672 90
fi

if ! port_open 15672; then
  $sudo rabbitmq-plugins enable --quiet rabbitmq_management
  wait_for_port "RabbitMQ management" 15672 60
fi
echo "services up: PostgreSQL 5432, Redis 6379, RabbitMQ 5672 (management 15672)"
