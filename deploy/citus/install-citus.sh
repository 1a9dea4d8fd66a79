#!/usr/bin/env bash
# Build and install the Citus extension for the local PostgreSQL from a Citus source tarball
# (`make citus CITUS_SRC=path/to/citus-X.Y.Z.tar.gz`). Idempotent: does nothing when citus is
# installed already. Needs root (or passwordless sudo) for apt and `make install`.
#
# Prefer a Citus package for your PostgreSQL where one exists (packages.citusdata.com,
# or the citusdata/citus container image); this is for machines that cannot reach one.
set -euo pipefail

SRC="${1:?usage: install-citus.sh path/to/citus-src.tar.gz}"
log() { printf '[install-citus] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
PG_CONFIG="${PG_CONFIG:-$(ls -1d /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -n 1)}"
[ -x "${PG_CONFIG:-}" ] || die "no pg_config: install the postgresql server package, or set PG_CONFIG"
PG_MAJOR="$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
if [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] && [ -f "$("$PG_CONFIG" --sharedir)/extension/citus.control" ]; then
    log "citus is already installed for PostgreSQL $PG_MAJOR"
    exit 0
fi
[ -f "$SRC" ] || die "no Citus source tarball at $SRC (CITUS_SRC=path/to/citus.tar.gz)"

# A build kit that ships its own installer next to the tarball knows its source best.
if [ -x "$(dirname "$SRC")/build.sh" ] || [ -f "$(dirname "$SRC")/build.sh" ]; then
    log "using $(dirname "$SRC")/build.sh"
    PG_CONFIG="$PG_CONFIG" exec bash "$(dirname "$SRC")/build.sh"
fi

DEPS=("postgresql-server-dev-$PG_MAJOR" build-essential libcurl4-openssl-dev liblz4-dev
      libzstd-dev libkrb5-dev libssl-dev libselinux1-dev libpam0g-dev libxslt1-dev
      libxml2-dev libreadline-dev zlib1g-dev)
MISSING=()
for p in "${DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$p")
done
if [ ${#MISSING[@]} -gt 0 ]; then
    log "installing build dependencies: ${MISSING[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${MISSING[@]}"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$SRC" -C "$WORK"
cd "$WORK"/citus-*
# Recent PostgreSQL 15 minors declare have_createdb_privilege() themselves; older Citus
# releases define a static copy for PG < 16. Rename Citus's copy only when they clash.
DBCMD_H="$("$PG_CONFIG" --includedir-server)/commands/dbcommands.h"
COMPAT_H="src/include/pg_version_compat.h"
if [ "$PG_MAJOR" -lt 16 ] && grep -q 'have_createdb_privilege' "$DBCMD_H" 2>/dev/null \
   && grep -q '^have_createdb_privilege(void)' "$COMPAT_H" 2>/dev/null; then
    sed -i -e 's/^#define have_createdb_privilege() have_createdb_privilege()$/#define citus_have_createdb_privilege() have_createdb_privilege()/' \
           -e 's/^have_createdb_privilege(void)$/citus_have_createdb_privilege(void)/' "$COMPAT_H"
    grep -rl --include='*.c' 'have_createdb_privilege()' src/backend \
        | xargs -r sed -i -E 's/(^|[^_[:alnum:]])have_createdb_privilege\(\)/\1citus_have_createdb_privilege()/g'
fi
log "building (a few minutes)"
./configure PG_CONFIG="$PG_CONFIG" >configure.log 2>&1 || { tail -n 30 configure.log >&2; die "configure failed"; }
make -j"$(nproc)" >make.log 2>&1 || { grep -E 'error' make.log | head -n 30 >&2; die "make failed"; }
$SUDO make install >install.log 2>&1 || { tail -n 30 install.log >&2; die "make install failed"; }
log "installed Citus for PostgreSQL $PG_MAJOR"
