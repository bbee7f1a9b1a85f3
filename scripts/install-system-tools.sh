#!/usr/bin/env bash
# Installs, with apt-get, the command-line tools backup_pipelines drives when
# they are missing. Backups shell out to the tools the operators already trust
# (pg_dump, redis-cli, restic) instead of re-implementing their protocols.
# `install-system-tools.sh test` adds what only the tests use: Chromium and its
# driver for the browser test, docker-compose to validate docker-compose.yml,
# promtool (Debian's prometheus package) to check and test the alert rules, and
# iproute2's `ip netns` for the sites' test.
set -euo pipefail

declare -A package_of=(
  [pg_dump]=postgresql-client [pg_restore]=postgresql-client [pg_dumpall]=postgresql-client
  [psql]=postgresql-client [redis-cli]=redis-tools [redis-check-rdb]=redis-tools
  [redis-server]=redis-server [restic]=restic [zstd]=zstd
  # a base backup restores with GNU tar (the extraction), fed and checked by us
  [tar]=tar
  [/usr/bin/time]=time
  # drills make throw-away PostgreSQL clusters with the server's initdb
  [/usr/lib/postgresql/*/bin/initdb]=postgresql
)
if [ "${1:-}" = "test" ]; then
  # Chromium only recommends fonts, and renders no text without one.
  package_of+=([chromium]=chromium [chromedriver]=chromium-driver [docker-compose]=docker-compose
               [promtool]=prometheus
               [/usr/share/fonts/truetype/liberation]=fonts-liberation
               # the sites' end-to-end test: a network namespace per site (ip netns)
               [ip]=iproute2 [unshare]=util-linux)
fi
missing=()
for tool in "${!package_of[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || compgen -G "$tool" >/dev/null || missing+=("${package_of[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "installing system tools: $packages"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $packages
