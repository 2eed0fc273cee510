#!/bin/sh
# Start the PostgreSQL and Redis the tests use (127.0.0.1:5432 db "test", 127.0.0.1:6379)
# when they are not answering; installs them from Debian if absent. Idempotent.
set -eu
export DEBIAN_FRONTEND=noninteractive
need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$2"; }; }
wait_for() { i=0; until sh -c "$1" >/dev/null 2>&1; do i=$((i+1)); [ $i -le 60 ] || return 1; sleep 0.5; done; }

need pg_isready postgresql
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  [ -d "/etc/postgresql/$ver/main" ] || pg_createcluster "$ver" main
  sed -i -E 's/(peer|scram-sha-256|md5)[[:space:]]*$/trust/' "/etc/postgresql/$ver/main/pg_hba.conf"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  wait_for 'pg_isready -q -h 127.0.0.1 -p 5432'
fi
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE test'

need redis-server redis-server
if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" != PONG ]; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for '[ "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG ]'
fi
