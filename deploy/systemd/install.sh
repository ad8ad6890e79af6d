#!/bin/bash
# Installs blockwatch's binaries, systemd units and example configs.
#
#   install.sh [--from DIR] [--prefix ROOT] [--only collector|agent] [--dry-run]
#
#   --from DIR     where the binaries are (default: target/release of this repository)
#   --prefix ROOT  install under ROOT instead of / (a test root, a package's staging
#                  directory); systemd is then left alone
#   --only SIDE    install only the collector's or only the agent's files
#   --dry-run      say what would be done, change nothing
#
# Binaries go to ROOT/usr/local/bin, units to ROOT/etc/systemd/system, example configs to
# ROOT/etc/blockwatch/ only when absent (an existing config is never overwritten). On the
# real root it then runs `systemctl daemon-reload`; it enables and starts nothing: that is the
# operator's step, once the config and the certificates are in place (deploy/README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
from="$here/../../target/release"
root=/
only=
dry_run=0

usage() {
  sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --from) from=${2:?--from needs a directory}; shift 2 ;;
    --prefix) root=${2:?--prefix needs a directory}; shift 2 ;;
    --only) only=${2:?--only needs collector or agent}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage ;;
  esac
done

case $only in
  '') sides=(collector agent) ;;
  collector | agent) sides=("$only") ;;
  *) echo "install.sh: --only takes collector or agent, not '$only'" >&2; exit 2 ;;
esac

root=${root%/}
bindir="$root/usr/local/bin"
unitdir="$root/etc/systemd/system"
confdir="$root/etc/blockwatch"

# Runs a command, or only prints it with --dry-run.
run() {
  if [ "$dry_run" = 1 ]; then
    printf 'would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

missing=()
for side in "${sides[@]}"; do
  [ -x "$from/blockwatch-$side" ] || missing+=("$from/blockwatch-$side")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: no executable ${missing[*]} (build with cargo build --release, or pass --from DIR)" >&2
  exit 1
fi

run install -d -m 0755 "$bindir" "$unitdir" "$confdir"
for side in "${sides[@]}"; do
  run install -m 0755 "$from/blockwatch-$side" "$bindir/blockwatch-$side"
  run install -m 0644 "$here/blockwatch-$side.service" "$unitdir/blockwatch-$side.service"
  if [ -e "$confdir/$side.toml" ]; then
    echo "kept $confdir/$side.toml (exists)"
  else
    run install -m 0644 "$here/$side.toml" "$confdir/$side.toml"
  fi
done
if [[ " ${sides[*]} " == *" agent "* ]]; then
  # Where the agent's certificate goes (root's; the unit hands the service a copy).
  run install -d -m 0700 "$confdir/agent"
fi

if [ "$root" = "" ] && [ "$dry_run" = 0 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

if [ "$dry_run" = 0 ]; then
  echo "installed under ${root:-/}: ${sides[*]}"
  for side in "${sides[@]}"; do
    echo "next: edit $confdir/$side.toml, then systemctl enable --now blockwatch-$side"
  done
fi
