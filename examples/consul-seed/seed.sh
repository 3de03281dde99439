#!/bin/sh
# seed.sh [DIR] — load a keymux KV seed folder into Consul, one `consul kv put` per file.
#
# Every DIR/**/*.json becomes the Consul key of its path without ".json" (DIR/keymux/keys/k1.json
# → keymux/keys/k1). DIR defaults to the folder holding this script (examples/consul-seed).
# The standard CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN… variables apply. Existing keys are
# overwritten; keys absent from DIR are left alone.
#
# POSIX sh and busybox tools only: docker-compose.yml runs it in the hashicorp/consul image
# (consul-seed service) with DIR = examples/compose-seed. Each put is retried while the agent is
# not answering yet (SEED_RETRIES attempts, one second apart; default 30).
set -eu

dir="${1:-$(dirname "$0")}"
retries="${SEED_RETRIES:-30}"

if [ ! -d "$dir" ]; then
	echo "seed.sh: $dir: not a directory" >&2
	exit 2
fi
cd "$dir"

put() {
	n=1
	until consul kv put "$1" "@$2" >/dev/null; do
		if [ "$n" -ge "$retries" ]; then
			echo "seed.sh: consul kv put $1 failed $n times; giving up" >&2
			return 1
		fi
		n=$((n + 1))
		sleep 1
	done
	echo "seed.sh: put $1"
}

count=0
# Sorted, so keys land before the rules that name them (keymux would cope with any order: a rule
# naming a missing key is refused alone and accepted once the key arrives).
files="$(find . -type f -name '*.json' | sed 's|^\./||' | sort)"
for f in $files; do
	put "${f%.json}" "$f"
	count=$((count + 1))
done
if [ "$count" -eq 0 ]; then
	echo "seed.sh: no *.json under $dir" >&2
	exit 1
fi
echo "seed.sh: $count entries from $dir into ${CONSUL_HTTP_ADDR:-127.0.0.1:8500}"
