#!/usr/bin/env node
// MQTT.js through tlsgate: a subscriber and a publisher, one message, MQTT 3.1.1 or 5.0.
//
// The TLS mode follows from the environment (or --name=value options of the same names in
// lower case, e.g. --tls-cafile=certs/ca.pem):
//   one-way TLS : TLS_CAFILE                      (the CA that signed tlsgate's certificate)
//   mutual TLS  : TLS_CAFILE + TLS_CERT + TLS_KEY (the device's certificate and key)
//   TLS-PSK     : PSK_IDENTITY + PSK_KEY          (the key in hex; TLS 1.3 or TLS 1.2)
// Other settings (defaults in brackets): MQTT_HOST [localhost], MQTT_PORT [8883], MQTT_VERSION
// [3.1.1] (or 5), MQTT_TOPIC, MQTT_MESSAGE, MQTT_CLIENT_ID [mqttjs-example] (-sub/-pub
// appended), MQTT_USERNAME / MQTT_PASSWORD, TLS_VERSION (1.2 or 1.3), TIMEOUT [10] seconds.
//
// Exit status: 0 the subscriber received the message, 1 it did not (the reason is printed).
//
//   npm install            # once, in this directory (MQTT.js from npm)
//   TLS_CAFILE=../../certs/ca.pem MQTT_VERSION=5 node roundtrip.js
'use strict';

const fs = require('fs');
const mqtt = require('mqtt');

function settings() {
  const s = { ...process.env };
  for (const arg of process.argv.slice(2)) {
    const m = /^--([a-z0-9-]+)=(.*)$/.exec(arg);
    if (!m) {
      console.error(`unknown argument ${arg} (use --name=value, e.g. --mqtt-port=8883)`);
      process.exit(2);
    }
    s[m[1].toUpperCase().replace(/-/g, '_')] = m[2];
  }
  return s;
}

const env = settings();
const host = env.MQTT_HOST || 'localhost';
const port = Number(env.MQTT_PORT || 8883);
const version = env.MQTT_VERSION || '3.1.1';
const topic = env.MQTT_TOPIC || 'examples/mqttjs';
const message = env.MQTT_MESSAGE || 'hello from MQTT.js';
const clientId = env.MQTT_CLIENT_ID || 'mqttjs-example';
const timeoutMs = Number(env.TIMEOUT || 10) * 1000;
if (!['3.1.1', '5'].includes(version)) {
  console.error(`MQTT_VERSION must be 3.1.1 or 5, not '${version}'`);
  process.exit(2);
}

// Everything here is handed to Node's tls.connect by MQTT.js.
function tlsOptions() {
  const opts = {};
  if (env.TLS_VERSION) {
    opts.minVersion = opts.maxVersion = `TLSv${env.TLS_VERSION}`;
  }
  if (env.PSK_IDENTITY) {
    const key = Buffer.from(env.PSK_KEY || '', 'hex');
    if (!key.length) {
      console.error('PSK_KEY (hex) is needed with PSK_IDENTITY');
      process.exit(2);
    }
    // TLS 1.2: PSK suites are not in Node's default list, and with only PSK suites offered a
    // listener that also has a certificate cannot pick a certificate suite. (TLS 1.3 suites
    // are configured apart from this list; tlsgate prefers the SHA-256 ones a PSK needs.)
    opts.ciphers = 'PSK';
    opts.pskCallback = () => ({ identity: env.PSK_IDENTITY, psk: key });
    // No certificate in a PSK handshake: nothing to check a host name against.
    opts.checkServerIdentity = () => undefined;
    return ['TLS-PSK', opts];
  }
  if (!env.TLS_CAFILE) {
    console.error('set TLS_CAFILE (or PSK_IDENTITY and PSK_KEY)');
    process.exit(2);
  }
  opts.ca = fs.readFileSync(env.TLS_CAFILE);
  opts.rejectUnauthorized = true; // chain and host name are verified
  if (env.TLS_CERT) {
    opts.cert = fs.readFileSync(env.TLS_CERT);
    opts.key = fs.readFileSync(env.TLS_KEY);
    return ['mutual TLS', opts];
  }
  return ['one-way TLS', opts];
}

const [mode, tls] = tlsOptions();
const what = `(${mode}, MQTT ${version})`;

function connect(suffix) {
  return mqtt.connectAsync(`mqtts://${host}:${port}`, {
    ...tls,
    protocolVersion: version === '5' ? 5 : 4,
    clientId: `${clientId}-${suffix}`,
    username: env.MQTT_USERNAME || undefined,
    password: env.MQTT_PASSWORD || undefined,
    clean: true,
    reconnectPeriod: 0, // fail instead of retrying: this is a test
    connectTimeout: timeoutMs,
  });
}

async function main() {
  const timer = setTimeout(() => {
    console.error(`FAIL: no result within ${timeoutMs / 1000}s ${what}`);
    process.exit(1);
  }, timeoutMs * 2);
  const sub = await connect('sub');
  const received = new Promise((resolve) => sub.on('message', (t, payload) => resolve(payload)));
  await sub.subscribeAsync(topic, { qos: 1 });
  const pub = await connect('pub');
  await pub.publishAsync(topic, message, { qos: 1 });
  await pub.endAsync();
  const payload = await received;
  await sub.endAsync();
  clearTimeout(timer);
  if (payload.toString() !== message) {
    console.error(`FAIL: received '${payload}', not '${message}' ${what}`);
    process.exit(1);
  }
  console.log(`OK: MQTT.js received '${message}' on '${topic}' ${what}`);
}

main().catch((err) => {
  console.error(`FAIL: ${err.message || err} ${what}`);
  process.exit(1);
});
