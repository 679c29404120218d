/*
 * Eclipse Paho C (libpaho-mqtt3cs, synchronous API) through tlsgate: a subscriber and a
 * publisher, one message, MQTT 3.1.1 or 5.0.
 *
 * The TLS mode follows from the environment:
 *   one-way TLS : TLS_CAFILE                      (the CA that signed tlsgate's certificate)
 *   mutual TLS  : TLS_CAFILE + TLS_CERT + TLS_KEY (the device's certificate and key)
 *   TLS-PSK     : PSK_IDENTITY + PSK_KEY          (the key in hex; through ssl_psk_cb)
 * Other settings (defaults in brackets): MQTT_HOST [localhost], MQTT_PORT [8883],
 * MQTT_VERSION [3.1.1] (or 5), MQTT_TOPIC, MQTT_MESSAGE, MQTT_CLIENT_ID [paho-c-example]
 * (-sub/-pub appended), MQTT_USERNAME / MQTT_PASSWORD, TIMEOUT [10] seconds.
 * TLS 1.3 is negotiated when the server offers it. Paho C 1.3 has no "maximum version" option
 * (its sslVersion is a minimum): to stay on TLS 1.2, cap the OpenSSL it links with an OpenSSL
 * config file, OPENSSL_CONF=tls12.cnf, as examples/mosquitto-clients/roundtrip.sh does.
 *
 * Exit status: 0 the subscriber received the message, 1 it did not (the reason is printed).
 *
 *   apt install libpaho-mqtt-dev
 *   cc -Wall -O2 -o roundtrip roundtrip.c -lpaho-mqtt3cs     (or: make -C examples/paho-c)
 *   TLS_CAFILE=certs/ca.pem MQTT_VERSION=5 ./roundtrip
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <MQTTClient.h>

static const char *env(const char *name, const char *def)
{
    const char *v = getenv(name);
    return (v && *v) ? v : def;
}

static int v5;           /* MQTT 5.0 instead of 3.1.1 */
static char what[64];    /* "(mode, MQTT version)" for messages */

static void fail(const char *step, int rc)
{
    fprintf(stderr, "FAIL: %s: %s (%d) %s\n", step, MQTTClient_strerror(rc), rc, what);
    exit(1);
}

/* TLS-PSK: OpenSSL asks for the identity and the key (SSL_CTX_set_psk_client_callback). */
struct psk { const char *identity; unsigned char key[256]; unsigned int key_len; };

static unsigned int psk_cb(const char *hint, char *identity, unsigned int max_identity_len,
                           unsigned char *psk, unsigned int max_psk_len, void *ctx)
{
    const struct psk *p = ctx;
    (void)hint;
    if (strlen(p->identity) + 1 > max_identity_len || p->key_len > max_psk_len)
        return 0;
    strcpy(identity, p->identity);
    memcpy(psk, p->key, p->key_len);
    return p->key_len;
}

static int hex_to_bytes(const char *hex, unsigned char *out, unsigned int max)
{
    size_t n = strlen(hex);
    if (n == 0 || n % 2 || n / 2 > max)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned int b;
        if (sscanf(hex + 2 * i, "%2x", &b) != 1)
            return -1;
        out[i] = (unsigned char)b;
    }
    return (int)(n / 2);
}

static MQTTClient_SSLOptions ssl_opts = MQTTClient_SSLOptions_initializer;
static struct psk psk_ctx;

static const char *setup_tls(void)
{
    if (getenv("TLS_VERSION") && *getenv("TLS_VERSION")) {
        fprintf(stderr, "TLS_VERSION: Paho C has no maximum TLS version; cap the client with "
                        "OPENSSL_CONF instead (see the comment at the top of roundtrip.c)\n");
        exit(2);
    }
    if (getenv("PSK_IDENTITY") && *getenv("PSK_IDENTITY")) {
        int n = hex_to_bytes(env("PSK_KEY", ""), psk_ctx.key, sizeof psk_ctx.key);
        if (n < 0) {
            fprintf(stderr, "PSK_KEY must be the key in hex\n");
            exit(2);
        }
        psk_ctx.identity = getenv("PSK_IDENTITY");
        psk_ctx.key_len = (unsigned int)n;
        ssl_opts.ssl_psk_cb = psk_cb;
        ssl_opts.ssl_psk_context = &psk_ctx;
        ssl_opts.enableServerCertAuth = 0;     /* no certificate in a PSK handshake */
        ssl_opts.verify = 0;
        ssl_opts.disableDefaultTrustStore = 1;
        ssl_opts.enabledCipherSuites = "PSK";  /* TLS 1.2 suites; TLS 1.3 uses the PSK as is */
        return "TLS-PSK";
    }
    ssl_opts.trustStore = getenv("TLS_CAFILE");
    if (!ssl_opts.trustStore || !*ssl_opts.trustStore) {
        fprintf(stderr, "set TLS_CAFILE (or PSK_IDENTITY and PSK_KEY)\n");
        exit(2);
    }
    ssl_opts.enableServerCertAuth = 1;         /* verify the chain ... */
    ssl_opts.verify = 1;                       /* ... and the host name */
    if (getenv("TLS_CERT") && *getenv("TLS_CERT")) {
        ssl_opts.keyStore = getenv("TLS_CERT");
        ssl_opts.privateKey = env("TLS_KEY", NULL);
        return "mutual TLS";
    }
    return "one-way TLS";
}

static MQTTClient connect_client(const char *uri, const char *client_id, int timeout_s)
{
    MQTTClient c;
    MQTTClient_createOptions create = MQTTClient_createOptions_initializer;
    create.MQTTVersion = v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    int rc = MQTTClient_createWithOptions(&c, uri, client_id, MQTTCLIENT_PERSISTENCE_NONE,
                                          NULL, &create);
    if (rc != MQTTCLIENT_SUCCESS)
        fail("create", rc);

    MQTTClient_connectOptions v3 = MQTTClient_connectOptions_initializer;
    MQTTClient_connectOptions v5opts = MQTTClient_connectOptions_initializer5;
    MQTTClient_connectOptions *opts = v5 ? &v5opts : &v3;
    opts->MQTTVersion = v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    opts->keepAliveInterval = 30;
    opts->connectTimeout = timeout_s;
    opts->ssl = &ssl_opts;
    opts->username = env("MQTT_USERNAME", NULL);
    opts->password = env("MQTT_PASSWORD", NULL);
    if (v5) {
        MQTTResponse r = MQTTClient_connect5(c, opts, NULL, NULL);
        rc = r.reasonCode;
        MQTTResponse_free(r);
    } else {
        rc = MQTTClient_connect(c, opts);
    }
    if (rc != MQTTCLIENT_SUCCESS)
        fail(client_id, rc);
    return c;
}

int main(void)
{
    const char *host = env("MQTT_HOST", "localhost");
    const char *port = env("MQTT_PORT", "8883");
    const char *version = env("MQTT_VERSION", "3.1.1");
    const char *topic = env("MQTT_TOPIC", "examples/paho-c");
    const char *message = env("MQTT_MESSAGE", "hello from Eclipse Paho C");
    const char *prefix = env("MQTT_CLIENT_ID", "paho-c-example");
    int timeout_s = atoi(env("TIMEOUT", "10"));
    char uri[300], sub_id[256], pub_id[256];
    int rc;

    if (strcmp(version, "5") == 0)
        v5 = 1;
    else if (strcmp(version, "3.1.1") != 0) {
        fprintf(stderr, "MQTT_VERSION must be 3.1.1 or 5, not '%s'\n", version);
        return 2;
    }
    snprintf(what, sizeof what, "(%s, MQTT %s)", setup_tls(), version);
    snprintf(uri, sizeof uri, "ssl://%s:%s", host, port);
    snprintf(sub_id, sizeof sub_id, "%s-sub", prefix);
    snprintf(pub_id, sizeof pub_id, "%s-pub", prefix);

    MQTTClient sub = connect_client(uri, sub_id, timeout_s);
    if (v5) {
        MQTTResponse r = MQTTClient_subscribe5(sub, topic, 1, NULL, NULL);
        rc = r.reasonCode == 1 ? MQTTCLIENT_SUCCESS : r.reasonCode;  /* 1 = granted QoS 1 */
        MQTTResponse_free(r);
    } else {
        rc = MQTTClient_subscribe(sub, topic, 1);
    }
    if (rc != MQTTCLIENT_SUCCESS)
        fail("subscribe", rc);

    MQTTClient pub = connect_client(uri, pub_id, timeout_s);
    MQTTClient_deliveryToken token;
    MQTTClient_message msg = MQTTClient_message_initializer;
    msg.payload = (void *)message;
    msg.payloadlen = (int)strlen(message);
    msg.qos = 1;
    if (v5) {
        MQTTResponse r = MQTTClient_publishMessage5(pub, topic, &msg, &token);
        rc = r.reasonCode;
        MQTTResponse_free(r);
    } else {
        rc = MQTTClient_publishMessage(pub, topic, &msg, &token);
    }
    if (rc == MQTTCLIENT_SUCCESS)  /* wait for the PUBACK */
        rc = MQTTClient_waitForCompletion(pub, token, (unsigned long)timeout_s * 1000);
    if (rc != MQTTCLIENT_SUCCESS)
        fail("publish", rc);
    MQTTClient_disconnect(pub, 1000);
    MQTTClient_destroy(&pub);

    /* No callbacks are set, so the synchronous client hands messages to MQTTClient_receive. */
    char *got_topic = NULL;
    int got_topic_len = 0;
    MQTTClient_message *got = NULL;
    rc = MQTTClient_receive(sub, &got_topic, &got_topic_len, &got,
                            (unsigned long)timeout_s * 1000);
    if (rc != MQTTCLIENT_SUCCESS && rc != MQTTCLIENT_TOPICNAME_TRUNCATED)
        fail("receive", rc);
    if (got == NULL) {
        fprintf(stderr, "FAIL: the message did not arrive within %ds %s\n", timeout_s, what);
        return 1;
    }
    int same = got->payloadlen == (int)strlen(message)
               && memcmp(got->payload, message, (size_t)got->payloadlen) == 0;
    if (!same)
        fprintf(stderr, "FAIL: received '%.*s', not '%s' %s\n", got->payloadlen,
                (char *)got->payload, message, what);
    else
        printf("OK: Eclipse Paho C received '%s' on '%s' %s\n", message, topic, what);
    MQTTClient_freeMessage(&got);
    MQTTClient_free(got_topic);
    MQTTClient_disconnect(sub, 1000);
    MQTTClient_destroy(&sub);
    return same ? 0 : 1;
}
