#!/usr/bin/env bash
# The whole test suite: installs what the tests need (as root, from Debian's packages),
# builds the binaries the end-to-end tests start, runs every test, then scores the detector on
# the labelled traces in ../shared/eval when that folder exists.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test dependencies: python3 runs the detector's scorer; nftables, iproute2 and util-linux
# (unshare) let the black-hole/reset tests build a private network namespace; Prometheus
# Alertmanager receives the collector's alerts in the alerting tests; Prometheus (with
# promtool) scrapes and checks both binaries' /metrics; Chromium loads the dashboard headless;
# nats-server makes the JetStream cluster of the clustered mode's test.
need=()
command -v python3 >/dev/null || need+=(python3)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v nats-server >/dev/null || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing test dependencies: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: missing ${need[*]} (not root or no apt-get); the tests that need them will say so and skip"
  fi
fi

# Python packages from PyPI: aiosmtpd is the SMTP server the e-mail sink's tests send to;
# schemathesis fuzzes the API against its OpenAPI document; pyarrow and DuckDB read the
# Parquet exports back; moto's server is the S3-compatible object store the archive's test
# writes to.
pypi=()
command -v python3 >/dev/null && ! python3 -c 'import aiosmtpd' 2>/dev/null && pypi+=(aiosmtpd)
command -v python3 >/dev/null && ! command -v schemathesis >/dev/null && pypi+=(schemathesis)
command -v python3 >/dev/null && ! python3 -c 'import pyarrow' 2>/dev/null && pypi+=(pyarrow)
command -v python3 >/dev/null && ! python3 -c 'import duckdb' 2>/dev/null && pypi+=(duckdb)
command -v python3 >/dev/null && ! python3 -c 'import moto.server, boto3' 2>/dev/null && pypi+=('moto[server]')
if [ ${#pypi[@]} -gt 0 ]; then
  echo "installing test dependencies from PyPI: ${pypi[*]}"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${pypi[@]}" \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "${pypi[@]}" \
    || echo "note: could not install ${pypi[*]}; the tests that need them will say so and skip"
fi

# oonidata, OONI's data tooling, loads the OONI-format export. It pins old versions of its
# own dependencies, so it goes into a directory of its own that only its test puts on
# PYTHONPATH.
if [ "$(id -u)" = 0 ]; then ooni_dir=/var/cache/blockwatch-python/oonidata; else ooni_dir="${XDG_CACHE_HOME:-$HOME/.cache}/blockwatch-python/oonidata"; fi
if command -v python3 >/dev/null && ! PYTHONPATH="$ooni_dir" python3 -c 'import oonidata.dataclient' 2>/dev/null; then
  echo "installing a test dependency from PyPI into $ooni_dir: oonidata"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --upgrade --target "$ooni_dir" oonidata \
    || echo "note: could not install oonidata; the OONI export's test will say so and skip"
fi
export BLOCKWATCH_OONIDATA_PATH="$ooni_dir"

cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads=2

# The deployment artefacts in deploy/: validated with their own tools (systemd-analyze,
# kubectl kustomize, kubernetes-validate, docker compose config, promtool, amtool,
# hadolint, shellcheck), and the shipped configs run with the binaries just built. It installs
# what it needs and says what it skipped, and why.
bash tests/deploy-check.sh

# The labelled traces beside the project, when they are there (a separate step: no test run
# by `cargo test` reads outside the repository).
target_dir=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bash tests/shared-eval.sh "$target_dir/debug/blockwatch-collector"
