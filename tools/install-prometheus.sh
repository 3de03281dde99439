#!/usr/bin/env bash
# Installs the real Prometheus (`prometheus` and `promtool`) that keymux's
# tests start and run: the e2e dashboard test scrapes keymux with it and runs
# every query of examples/grafana/keymux.json; the examples test runs
# `promtool check rules` and `promtool test rules` on examples/prometheus/.
#
# Source: the distribution's `prometheus` package (Debian bookworm: 2.42.0),
# installed without recommends and without starting its service. Nothing is
# done when both programs are already on $PATH.
#
# Usage: tools/install-prometheus.sh   (as root, or with sudo available)
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
	echo "tools: prometheus $(prometheus --version 2>/dev/null | sed -n 's/^prometheus, version \([^ ]*\).*/\1/p') already installed (skipped)"
	exit 0
fi

if ! command -v apt-get >/dev/null; then
	echo "tools/install-prometheus.sh: no apt-get; install Prometheus 2.x (prometheus and promtool on \$PATH) by other means" >&2
	exit 1
fi
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
	sudo=(sudo)
fi

echo "tools: installing the prometheus package (apt-get) ..."
# policy-rc.d exit 101 keeps the package's own service from starting: the
# tests start their own instances on free ports.
rcd=/usr/sbin/policy-rc.d
made_rcd=""
if [[ ! -e "$rcd" ]]; then
	printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$rcd" >/dev/null
	"${sudo[@]}" chmod 755 "$rcd"
	made_rcd=1
fi
cleanup() { if [[ -n "$made_rcd" ]]; then "${sudo[@]}" rm -f "$rcd"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null

for exe in prometheus promtool; do
	if ! command -v "$exe" >/dev/null; then
		echo "tools/install-prometheus.sh: the prometheus package installed no $exe on \$PATH" >&2
		exit 1
	fi
done
echo "tools: installed $(prometheus --version 2>/dev/null | head -n1)"
