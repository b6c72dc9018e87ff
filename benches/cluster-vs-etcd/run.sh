#!/usr/bin/env bash
# FlashKV vs etcd, 3 nodes each on 127.0.0.1 (see README.md).
#
#   bash benches/cluster-vs-etcd/run.sh [--quick] [--repeat N] [other flags: --help]
#
# Installs what is missing from Debian (etcd-server and etcd-client for
# etcd 3.4; protobuf-compiler, whose protoc the etcd-client crate's build
# needs), builds kvd in release mode into the workspace's target dir, then
# builds and runs the benchmark crate (its own workspace and target dir).
# Never run it in CI: it installs packages and takes minutes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if [ -n "${CI:-}" ]; then
    echo "cluster-vs-etcd: not in CI (it installs packages and runs for minutes)" >&2
    exit 1
fi

need=()
command -v etcd >/dev/null || need+=(etcd-server etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
    echo "cluster-vs-etcd: installing ${need[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${need[@]}"
fi

# Debian's etcd-server package may start a system etcd on the default
# ports; the benchmark uses free ports of its own and does not need it.

# With --kvd PATH the given binary is used as it is.
kvd_args=()
case " $* " in
    *" --kvd "* | *" --kvd="*) ;;
    *)
        (cd "$repo" && cargo build --release -p kvd)
        kvd_args=(--kvd "${CARGO_TARGET_DIR:-$repo/target}/release/kvd")
        ;;
esac

exec cargo run --release --manifest-path "$here/Cargo.toml" -- "${kvd_args[@]}" "$@"
