#!/bin/bash
# Quiet-machine timings, one after another: quick with and without diagnostics, search-quick, spaces-quick.
# Usage: benchmarks/quiet_timings.sh (from anywhere); wall seconds in /tmp/bench/times.txt, each run's output in /tmp/bench/<study>.out.
mkdir -p /tmp/bench && cd "$(dirname "$0")/.." && root=$(pwd) && cd /tmp/bench
sed 's/^name = "quick"/name = "quick-nodiag"/' $root/studies/quick.toml > quick-nodiag.toml
printf '\n[diagnostics]\ninit = false\nlesion = false\nlandscape = "none"\n' >> quick-nodiag.toml
for s in quick-nodiag:/tmp/bench/quick-nodiag.toml quick:$root/studies/quick.toml search-quick:$root/studies/search-quick.toml spaces-quick:$root/studies/spaces-quick.toml; do
  name=${s%%:*}; file=${s#*:}
  start=$(date +%s.%N)
  uv run --project "$root" ablate run "$file" --storage sqlite:////tmp/bench/$name.db > /tmp/bench/$name.out 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$name rc=$rc seconds=$(echo "$end - $start" | bc)" >> /tmp/bench/times.txt
done
