#!/bin/sh
# Writes the credential files kustomize's secretGenerator reads (kustomization.yaml here):
#   postgres.env  POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB  (the PostgreSQL StatefulSet)
#   redis.env     REDIS_PASSWORD                                  (the Redis StatefulSet)
#   app.env       database-url, blob-url, secret-key              (web, steps, migrate Job)
# with random passwords. An existing file is kept: PostgreSQL keeps the password it was first
# initialised with, so regenerating would lock the services out of their own database.
# Usage: sh knative/base/secrets/generate.sh [DIR]   (DIR defaults to this script's folder)
set -eu
dir=${1:-$(dirname "$0")}
umask 077

random_hex() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

if [ ! -f "$dir/postgres.env" ]; then
  printf 'POSTGRES_USER=imagerec\nPOSTGRES_PASSWORD=%s\nPOSTGRES_DB=imagerec\n' "$(random_hex)" \
    > "$dir/postgres.env"
fi
if [ ! -f "$dir/redis.env" ]; then
  printf 'REDIS_PASSWORD=%s\n' "$(random_hex)" > "$dir/redis.env"
fi
if [ ! -f "$dir/app.env" ]; then
  # The URLs repeat the passwords above; hex needs no URL escaping.
  . "$dir/postgres.env"
  . "$dir/redis.env"
  {
    printf 'database-url=postgresql://%s:%s@postgres:5432/%s\n' \
      "$POSTGRES_USER" "$POSTGRES_PASSWORD" "$POSTGRES_DB"
    printf 'blob-url=redis://:%s@redis:6379/0\n' "$REDIS_PASSWORD"
    printf 'secret-key=%s\n' "$(random_hex)"
  } > "$dir/app.env"
fi
