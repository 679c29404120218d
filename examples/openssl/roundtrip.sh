#!/bin/sh
# MQTT by hand over `openssl s_client`: the bytes a device sends, with no MQTT library at all.
# One s_client subscribes (CONNECT + SUBSCRIBE), a second one publishes (CONNECT, PUBLISH and
# DISCONNECT in one write, without waiting for the CONNACK, which MQTT allows); the script exits
# 0 once the subscriber's stream carries the message (1 otherwise). MQTT 3.1.1 and 5.0.
#
# The TLS mode follows from the environment:
#   one-way TLS : TLS_CAFILE                      (the CA that signed tlsgate's certificate)
#   mutual TLS  : TLS_CAFILE + TLS_CERT + TLS_KEY (the device's certificate and key)
#   TLS-PSK     : PSK_IDENTITY + PSK_KEY          (the key in hex, as `s_client -psk` takes it)
# Other settings (defaults in brackets): MQTT_HOST [localhost], MQTT_PORT [8883],
# MQTT_VERSION [3.1.1] (or 5), MQTT_TOPIC [examples/openssl], MQTT_MESSAGE (ASCII),
# MQTT_CLIENT_ID [openssl-example] (-sub/-pub appended), MQTT_USERNAME / MQTT_PASSWORD (ASCII),
# TLS_VERSION (1.2 or 1.3), TIMEOUT [10] seconds, OPENSSL [openssl].
#
#   TLS_CAFILE=certs/ca.pem MQTT_VERSION=5 examples/openssl/roundtrip.sh
set -eu

HOST=${MQTT_HOST:-localhost}
PORT=${MQTT_PORT:-8883}
VERSION=${MQTT_VERSION:-3.1.1}
TOPIC=${MQTT_TOPIC:-examples/openssl}
MESSAGE=${MQTT_MESSAGE:-hello from openssl s_client}
CLIENT_ID=${MQTT_CLIENT_ID:-openssl-example}
TIMEOUT=${TIMEOUT:-10}
OPENSSL=${OPENSSL:-openssl}

case $VERSION in
    3.1.1|311|4) level=4 ;;
    5|5.0) level=5 ;;
    *) echo "MQTT_VERSION must be 3.1.1 or 5, not '$VERSION'" >&2; exit 2 ;;
esac

# ---- s_client arguments for the TLS mode ---------------------------------------------------
set -- -connect "$HOST:$PORT" -quiet -nocommands -servername "$HOST"
if [ -n "${PSK_IDENTITY:-}" ]; then
    mode="TLS-PSK"
    set -- "$@" -psk "${PSK_KEY:?PSK_KEY (hex) is needed with PSK_IDENTITY}" \
        -psk_identity "$PSK_IDENTITY"
else
    # Verify the server: chain to TLS_CAFILE and the host name (or IP) in its certificate.
    set -- "$@" -CAfile "${TLS_CAFILE:?set TLS_CAFILE (or PSK_IDENTITY and PSK_KEY)}" \
        -verify_return_error
    case $HOST in
        *[!0-9.]*) set -- "$@" -verify_hostname "$HOST" ;;
        *) set -- "$@" -verify_ip "$HOST" ;;
    esac
    if [ -n "${TLS_CERT:-}" ]; then
        mode="mutual TLS"
        set -- "$@" -cert "$TLS_CERT" -key "${TLS_KEY:?TLS_KEY is needed with TLS_CERT}"
    else
        mode="one-way TLS"
    fi
fi
case ${TLS_VERSION:-} in
    "") ;;
    1.2) set -- "$@" -tls1_2 ;;
    1.3) set -- "$@" -tls1_3 ;;
    *) echo "TLS_VERSION must be 1.2 or 1.3" >&2; exit 2 ;;
esac

work=$(mktemp -d)
sub=""
cleanup() {
    exec 3>&- 2>/dev/null || true
    [ -n "$sub" ] && kill "$sub" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# ---- MQTT packets, byte by byte ----------------------------------------------------------------
byte() { printf "\\$(printf '%03o' "$1")"; }
u16() { byte $(($1 / 256)); byte $(($1 % 256)); }
str() { u16 ${#1}; printf '%s' "$1"; }               # ASCII: ${#} counts bytes
props() { [ "$level" = 5 ] && byte 0; return 0; }    # MQTT 5: an empty property list
varint() {                                            # the "remaining length"
    n=$1
    while :; do
        b=$((n % 128)); n=$((n / 128))
        if [ "$n" -gt 0 ]; then byte $((b + 128)); else byte "$b"; break; fi
    done
}
packet() {  # packet FIRST-BYTE BODY-FILE: fixed header + body
    byte "$1"; varint "$(wc -c < "$2")"; cat "$2"
}
connect() {  # connect CLIENT-ID > file
    flags=2                                   # clean session / clean start
    [ -n "${MQTT_USERNAME:-}" ] && flags=$((flags + 128))
    [ -n "${MQTT_PASSWORD:-}" ] && flags=$((flags + 64))
    { str MQTT; byte "$level"; byte "$flags"; u16 60; props; str "$1"
      [ -n "${MQTT_USERNAME:-}" ] && str "$MQTT_USERNAME"
      [ -n "${MQTT_PASSWORD:-}" ] && str "$MQTT_PASSWORD"; true; } > "$work/body"
    packet 16 "$work/body"
}

{ connect "$CLIENT_ID-sub"
  { u16 1; props; str "$TOPIC"; byte 0; } > "$work/body"   # packet id 1, QoS 0
  packet 130 "$work/body"; } > "$work/subscribe.bin"
{ connect "$CLIENT_ID-pub"
  { str "$TOPIC"; props; printf '%s' "$MESSAGE"; } > "$work/body"   # QoS 0: no packet id
  packet 48 "$work/body"
  byte 224; byte 0; } > "$work/publish.bin"                   # DISCONNECT

hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }
# SUBACK for packet id 1 granting QoS 0: 90 03 00 01 00 (3.1.1), 90 04 00 01 00 00 (5.0)
if [ "$level" = 5 ]; then suback=900400010000; else suback=9003000100; fi

# ---- the subscriber: s_client reading from a FIFO we keep open ---------------------------------
mkfifo "$work/in"
"$OPENSSL" s_client "$@" < "$work/in" > "$work/sub.out" 2> "$work/sub.err" &
sub=$!
exec 3> "$work/in"
cat "$work/subscribe.bin" >&3
waited=0
until hex "$work/sub.out" | grep -q "$suback"; do
    if ! kill -0 "$sub" 2>/dev/null || [ "$waited" -ge $((TIMEOUT * 10)) ]; then
        echo "FAIL: no SUBACK for the subscriber ($mode, MQTT $VERSION):" >&2
        cat "$work/sub.err" >&2
        exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
done

# ---- the publisher: everything in one go; the broker closes after DISCONNECT -----------------
if ! timeout "$TIMEOUT" "$OPENSSL" s_client "$@" < "$work/publish.bin" > "$work/pub.out" \
        2> "$work/pub.err"; then
    echo "FAIL: the publisher's s_client failed ($mode, MQTT $VERSION):" >&2
    cat "$work/pub.err" >&2
    exit 1
fi

# The PUBLISH is the last thing on the subscriber's stream: it ends with the payload.
printf '%s' "$MESSAGE" > "$work/message"
size=$(wc -c < "$work/message")
waited=0
until tail -c "$size" "$work/sub.out" | cmp -s - "$work/message"; do
    if [ "$waited" -ge $((TIMEOUT * 10)) ]; then
        echo "FAIL: the message did not arrive ($mode, MQTT $VERSION); subscriber got:" >&2
        hex "$work/sub.out" >&2; echo >&2
        exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
done
byte 224 >&3; byte 0 >&3   # the subscriber's DISCONNECT
exec 3>&-
wait "$sub" || true
sub=""
echo "OK: s_client received '$MESSAGE' on '$TOPIC' ($mode, MQTT $VERSION)"
