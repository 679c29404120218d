#!/bin/sh
# Check the configuration (every certificate, key, CA and PSK file it names) before serving:
# a bad config stops here with each problem and its key, exit status 2.
set -eu
config="${TLSGATE_CONFIG:-/etc/tlsgate/tlsgate.toml}"
tlsgate check-config -c "$config"
exec tlsgate serve -c "$config"
