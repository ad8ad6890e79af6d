#!/bin/bash
# The compose stack's one-shot `pki` service: makes the fleet CA (with the collector's
# certificate for the name the agents use, "collector") and one certificate per agent, in
# DIR (the pki volume). A second run finds them and changes nothing, so `docker compose up`
# can run it every time.
#
#   init-pki.sh DIR
set -euo pipefail

dir=${1:?usage: init-pki.sh DIR}
ca="$dir/fleet-ca"
# The agents of deploy/compose.yaml, as ID:REGION.
agents=(eu-1:eu us-1:us hk-1:hk)

if [ -f "$ca/ca.key" ]; then
  echo "fleet CA: $ca exists, kept"
else
  blockwatch-collector ca init --dir "$ca" --name collector
fi
for entry in "${agents[@]}"; do
  id=${entry%%:*}
  region=${entry#*:}
  out="$dir/agents/$id"
  if [ -f "$out/agent.crt" ] && [ -f "$out/agent.key" ]; then
    echo "agent $id: certificate in $out exists, kept"
  else
    blockwatch-collector ca issue-agent --dir "$ca" --id "$id" --region "$region" --out "$out"
  fi
done
