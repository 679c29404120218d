#!/bin/sh
# TLS-PSK with mosquitto's command line clients against tlsgate on localhost:8883.
#
# Expects tlsgate running with a [psk_authentication] table that has IDENTITY, e.g.
#   tlsgate serve -c examples/psk/tlsgate-psk.toml
# (examples/psk/psk.txt: "dev1:secret-key", format = "emqx"), in front of a broker.
#
# Shows: a subscriber over TLS 1.3 PSK receiving one message published over TLS 1.2 PSK and
# one over TLS 1.3 PSK, then an unknown identity being refused.
#
# Override with environment variables: HOST, PORT, IDENTITY, PSK_HEX (the key in hex; for an
# "emqx"-format file that is the hex of the secret's bytes), TOPIC.
set -eu

HOST=${HOST:-localhost}
PORT=${PORT:-8883}
IDENTITY=${IDENTITY:-dev1}
# "secret-key" as hex; `printf %s secret-key | od -An -tx1 | tr -d ' \n'` prints it.
PSK_HEX=${PSK_HEX:-7365637265742d6b6579}
TOPIC=${TOPIC:-demo/psk}

common="-h $HOST -p $PORT --psk $PSK_HEX --psk-identity $IDENTITY -t $TOPIC"

# mosquitto's --tls-version is a *minimum* ("tlsv1.2" still negotiates 1.3 when the server
# can). To really use TLS 1.2, cap the OpenSSL the client links through an OpenSSL config.
tls12_conf=$(mktemp)
trap 'rm -f "$tls12_conf"' EXIT
cat > "$tls12_conf" <<'CNF'
openssl_conf = psk_example
[psk_example]
ssl_conf = psk_example_ssl
[psk_example_ssl]
system_default = psk_example_tls
[psk_example_tls]
MaxProtocol = TLSv1.2
CNF

echo "subscribing to $TOPIC over TLS 1.3 PSK as $IDENTITY ..."
# shellcheck disable=SC2086
mosquitto_sub $common -i psk-example-sub --tls-version tlsv1.3 -C 2 -W 15 -v &
sub=$!
sleep 1

echo "publishing over TLS 1.2 PSK ..."
# shellcheck disable=SC2086
OPENSSL_CONF=$tls12_conf mosquitto_pub $common -i psk-example-pub12 --tls-version tlsv1.2 \
    -m "hello over TLS 1.2 PSK"

echo "publishing over TLS 1.3 PSK ..."
# shellcheck disable=SC2086
mosquitto_pub $common -i psk-example-pub13 --tls-version tlsv1.3 -m "hello over TLS 1.3 PSK"

wait "$sub"
echo "subscriber got both messages"

echo "an unknown identity must be refused:"
if mosquitto_pub -h "$HOST" -p "$PORT" --psk "$PSK_HEX" --psk-identity no-such-device \
        -t "$TOPIC" -m "should not arrive" 2>&1; then
    echo "UNEXPECTED: the unknown identity was accepted" >&2
    exit 1
fi
echo "refused, as it should be (tlsgate logs the identity, never the key)"
