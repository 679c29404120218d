#!/bin/sh
# mosquitto_sub and mosquitto_pub through tlsgate: the subscriber connects, the publisher sends one
# message, the script exits 0 once the subscriber has received it (1 otherwise).
#
# The TLS mode follows from the environment:
#   one-way TLS : TLS_CAFILE                      (the CA that signed tlsgate's certificate)
#   mutual TLS  : TLS_CAFILE + TLS_CERT + TLS_KEY (the device's certificate and key)
#   TLS-PSK     : PSK_IDENTITY + PSK_KEY          (the key in hex, as mosquitto's --psk takes it)
# Other settings (defaults in brackets): MQTT_HOST [localhost], MQTT_PORT [8883],
# MQTT_VERSION [3.1.1] (or 5), MQTT_TOPIC [examples/mosquitto], MQTT_MESSAGE, MQTT_CLIENT_ID
# [mosquitto-example] (-sub/-pub are appended), MQTT_USERNAME / MQTT_PASSWORD, TLS_VERSION
# (1.2 or 1.3: the only version offered), TIMEOUT [10] seconds.
#
#   tlsgate certs init certs/
#   TLS_CAFILE=certs/ca.pem MQTT_PORT=8883 examples/mosquitto-clients/roundtrip.sh
#   TLS_CAFILE=certs/ca.pem TLS_CERT=certs/client.pem TLS_KEY=certs/client.key \
#       MQTT_PORT=8884 examples/mosquitto-clients/roundtrip.sh
#   PSK_IDENTITY=dev1 PSK_KEY=7365637265742d6b6579 MQTT_PORT=8885 \
#       examples/mosquitto-clients/roundtrip.sh
set -eu

HOST=${MQTT_HOST:-localhost}
PORT=${MQTT_PORT:-8883}
VERSION=${MQTT_VERSION:-3.1.1}
TOPIC=${MQTT_TOPIC:-examples/mosquitto}
MESSAGE=${MQTT_MESSAGE:-hello from mosquitto_pub}
CLIENT_ID=${MQTT_CLIENT_ID:-mosquitto-example}
TIMEOUT=${TIMEOUT:-10}

case $VERSION in
    3.1.1|311|4) set -- -V mqttv311 ;;
    5|5.0) set -- -V mqttv5 ;;
    *) echo "MQTT_VERSION must be 3.1.1 or 5, not '$VERSION'" >&2; exit 2 ;;
esac
set -- "$@" -h "$HOST" -p "$PORT" -t "$TOPIC"
[ -n "${MQTT_USERNAME:-}" ] && set -- "$@" -u "$MQTT_USERNAME"
[ -n "${MQTT_PASSWORD:-}" ] && set -- "$@" -P "$MQTT_PASSWORD"

if [ -n "${PSK_IDENTITY:-}" ]; then
    mode="TLS-PSK"
    set -- "$@" --psk "${PSK_KEY:?PSK_KEY (hex) is needed with PSK_IDENTITY}" \
        --psk-identity "$PSK_IDENTITY"
else
    set -- "$@" --cafile "${TLS_CAFILE:?set TLS_CAFILE (or PSK_IDENTITY and PSK_KEY)}"
    if [ -n "${TLS_CERT:-}" ]; then
        mode="mutual TLS"
        set -- "$@" --cert "$TLS_CERT" --key "${TLS_KEY:?TLS_KEY is needed with TLS_CERT}"
    else
        mode="one-way TLS"
    fi
fi

work=$(mktemp -d)
sub=""
cleanup() {
    [ -n "$sub" ] && kill "$sub" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# mosquitto's --tls-version is a *minimum*; to offer exactly one version, cap the OpenSSL that
# the client links through an OpenSSL config file as well.
case ${TLS_VERSION:-} in
    "") ;;
    1.2|1.3)
        set -- "$@" --tls-version "tlsv$TLS_VERSION"
        printf '%s\n' "openssl_conf = cap" "[cap]" "ssl_conf = cap_ssl" "[cap_ssl]" \
            "system_default = cap_tls" "[cap_tls]" "MaxProtocol = TLSv$TLS_VERSION" \
            > "$work/openssl.cnf"
        OPENSSL_CONF=$work/openssl.cnf
        export OPENSSL_CONF ;;
    *) echo "TLS_VERSION must be 1.2 or 1.3" >&2; exit 2 ;;
esac

# -d prints the protocol exchange, so we know when the subscription is in place (stdbuf: line
# buffering, or the lines would only reach the file when mosquitto_sub exits).
stdbuf -oL mosquitto_sub "$@" -i "$CLIENT_ID-sub" -C 1 -W "$TIMEOUT" -d > "$work/sub.out" 2>&1 &
sub=$!
waited=0
until grep -q "received SUBACK" "$work/sub.out"; do
    if ! kill -0 "$sub" 2>/dev/null || [ "$waited" -ge $((TIMEOUT * 10)) ]; then
        echo "FAIL: mosquitto_sub did not subscribe ($mode, MQTT $VERSION):" >&2
        cat "$work/sub.out" >&2
        exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
done

if ! mosquitto_pub "$@" -i "$CLIENT_ID-pub" -m "$MESSAGE"; then
    echo "FAIL: mosquitto_pub could not publish ($mode, MQTT $VERSION)" >&2
    exit 1
fi
if wait "$sub" && grep -qxF "$MESSAGE" "$work/sub.out"; then
    sub=""
    echo "OK: mosquitto_sub received '$MESSAGE' on '$TOPIC' ($mode, MQTT $VERSION)"
    exit 0
fi
sub=""
echo "FAIL: the message did not arrive ($mode, MQTT $VERSION):" >&2
cat "$work/sub.out" >&2
exit 1
