#!/usr/bin/env bash
# Builds the external programs keymux's tests and docker-less demos use into
# tools/bin (git-ignored):
#
#   tools/bin/consul   HashiCorp Consul v1.14.11 (MPL-2.0), module tools/consul
#   tools/bin/jaeger   Jaeger v1.76.0 module = the Jaeger v2.13.0 binary
#                      (all-in-one by default),                module tools/jaeger
#
# Each tool has its own Go module so that neither's dependency versions
# (Consul 1.14 needs grpc 1.56 and go-control-plane 0.11; Jaeger 1.76 needs
# grpc 1.76 and go-control-plane 0.13) leak into the other or into keymux's
# own go.mod. A build is skipped when the binary is already there and reports
# the pinned version.
#
# Usage: tools/build.sh [consul|jaeger]...   (default: both)
#        TOOLS_FORCE=1 tools/build.sh         rebuild even when up to date
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
mkdir -p "$bin"

# The first resolution of hcp-sdk-go (a pseudo-version Consul pins) is not in
# the checksum database; go.sum is committed, so this only matters when the
# module is re-resolved.
export GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}github.com/hashicorp/hcp-sdk-go"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

# module_version DIR MODULE → the version DIR/go.mod pins for MODULE.
module_version() {
	(cd "$1" && go list -m -f '{{.Version}}' "$2")
}

# installed_version NAME → the version the binary in tools/bin reports, or "".
installed_version() {
	local exe="$bin/$1"
	[[ -x "$exe" ]] || return 0
	case "$1" in
	consul) "$exe" version 2>/dev/null | sed -n 's/^Consul \(v[^ ]*\).*/\1/p' | head -n1 ;;
	jaeger) "$exe" version 2>/dev/null | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -n1 ;;
	esac
}

build() {
	local name="$1" dir pkg ver have ldflags=() start
	case "$name" in
	consul)
		dir="$here/consul"
		pkg=github.com/hashicorp/consul
		ver="$(module_version "$dir" github.com/hashicorp/consul)"
		;;
	jaeger)
		dir="$here/jaeger"
		pkg=github.com/jaegertracing/jaeger/cmd/jaeger
		ver="$(module_version "$dir" github.com/jaegertracing/jaeger)"
		# What Jaeger's own Makefile stamps, so `jaeger version` names the release.
		ldflags=(-ldflags "-X github.com/jaegertracing/jaeger/internal/version.latestVersion=$ver")
		;;
	*)
		echo "tools/build.sh: unknown tool \"$name\" (want consul or jaeger)" >&2
		return 2
		;;
	esac
	have="$(installed_version "$name")"
	if [[ "$have" == "$ver" && -z "${TOOLS_FORCE:-}" ]]; then
		echo "tools: $name $ver already built at tools/bin/$name (skipped)"
		return 0
	fi
	if [[ -n "$have" ]]; then
		echo "tools: tools/bin/$name reports $have, want $ver: rebuilding"
	fi
	echo "tools: building $name $ver into tools/bin/$name (a few minutes on a small machine) ..."
	start=$SECONDS
	(cd "$dir" && go build "${ldflags[@]}" -o "$bin/$name.tmp" "$pkg")
	mv -f "$bin/$name.tmp" "$bin/$name"
	have="$(installed_version "$name")"
	if [[ "$have" != "$ver" ]]; then
		echo "tools: built tools/bin/$name but it reports \"$have\", want $ver" >&2
		return 1
	fi
	echo "tools: built $name $ver in $((SECONDS - start))s"
}

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(consul jaeger)
for t in "${tools[@]}"; do
	build "$t"
done
