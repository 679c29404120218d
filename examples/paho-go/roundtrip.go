// Eclipse Paho Go (github.com/eclipse/paho.mqtt.golang) through tlsgate: a subscriber and a
// publisher, one message.
//
// The TLS mode follows from the flags (or the environment variables in brackets):
//
//	one-way TLS : -cafile [TLS_CAFILE]                        the CA of tlsgate's certificate
//	mutual TLS  : -cafile + -cert [TLS_CERT] + -key [TLS_KEY] the device's certificate and key
//	TLS-PSK     : not possible: Go's crypto/tls has no TLS-PSK (exit status 3)
//
// paho.mqtt.golang speaks MQTT 3.1 and 3.1.1; MQTT 5 is a different module
// (github.com/eclipse/paho.golang), so -mqtt-version 5 exits with status 3 as well.
// Exit status: 0 the subscriber received the message, 1 it did not (the reason is printed).
//
// Build against Debian's golang-github-eclipse-paho.mqtt.golang-dev, offline:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o roundtrip roundtrip.go
//	TLS_CAFILE=certs/ca.pem ./roundtrip -port 8883
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

const unsupported = 3

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	port, _ := strconv.Atoi(env("MQTT_PORT", "8883"))
	timeoutS, _ := strconv.ParseFloat(env("TIMEOUT", "10"), 64)
	host := flag.String("host", env("MQTT_HOST", "localhost"), "tlsgate host")
	flag.IntVar(&port, "port", port, "tlsgate port")
	version := flag.String("mqtt-version", env("MQTT_VERSION", "3.1.1"), "3.1.1 (or 5: not supported)")
	topic := flag.String("topic", env("MQTT_TOPIC", "examples/paho-go"), "topic")
	message := flag.String("message", env("MQTT_MESSAGE", "hello from Eclipse Paho Go"), "payload")
	clientID := flag.String("client-id", env("MQTT_CLIENT_ID", "paho-go-example"), "client id prefix (-sub/-pub appended)")
	username := flag.String("username", env("MQTT_USERNAME", ""), "MQTT user name")
	password := flag.String("password", env("MQTT_PASSWORD", ""), "MQTT password")
	cafile := flag.String("cafile", env("TLS_CAFILE", ""), "CA certificate (PEM)")
	certfile := flag.String("cert", env("TLS_CERT", ""), "client certificate (PEM), for mutual TLS")
	keyfile := flag.String("key", env("TLS_KEY", ""), "client key (PEM), for mutual TLS")
	pskIdentity := flag.String("psk-identity", env("PSK_IDENTITY", ""), "TLS-PSK identity (not supported)")
	tlsVersion := flag.String("tls-version", env("TLS_VERSION", ""), "1.2 or 1.3: the only version offered")
	flag.Float64Var(&timeoutS, "timeout", timeoutS, "seconds")
	flag.Parse()
	timeout := time.Duration(timeoutS * float64(time.Second))

	if *pskIdentity != "" {
		fmt.Fprintln(os.Stderr, "UNSUPPORTED: Go's crypto/tls has no TLS-PSK (golang/go#6379)")
		os.Exit(unsupported)
	}
	if *version == "5" {
		fmt.Fprintln(os.Stderr, "UNSUPPORTED: paho.mqtt.golang speaks MQTT 3.1/3.1.1 only "+
			"(MQTT 5 is github.com/eclipse/paho.golang)")
		os.Exit(unsupported)
	}
	if *version != "3.1.1" {
		fmt.Fprintf(os.Stderr, "-mqtt-version must be 3.1.1 or 5, not %q\n", *version)
		os.Exit(2)
	}
	if *cafile == "" {
		fmt.Fprintln(os.Stderr, "give -cafile (TLS_CAFILE)")
		os.Exit(2)
	}

	// The TLS configuration: verify tlsgate's chain and host name; present a certificate for
	// mutual TLS.
	pem, err := os.ReadFile(*cafile)
	if err != nil {
		fail("%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", *cafile)
	}
	conf := &tls.Config{RootCAs: pool, ServerName: *host}
	mode := "one-way TLS"
	if *certfile != "" {
		pair, err := tls.LoadX509KeyPair(*certfile, *keyfile)
		if err != nil {
			fail("client certificate: %v", err)
		}
		conf.Certificates = []tls.Certificate{pair}
		mode = "mutual TLS"
	}
	switch *tlsVersion {
	case "":
	case "1.2":
		conf.MinVersion, conf.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	case "1.3":
		conf.MinVersion, conf.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	default:
		fmt.Fprintln(os.Stderr, "-tls-version must be 1.2 or 1.3")
		os.Exit(2)
	}
	what := fmt.Sprintf("(%s, MQTT %s)", mode, *version)

	newClient := func(suffix string, onMessage mqtt.MessageHandler) mqtt.Client {
		opts := mqtt.NewClientOptions().
			AddBroker(fmt.Sprintf("ssl://%s:%d", *host, port)).
			SetClientID(*clientID + "-" + suffix).
			SetTLSConfig(conf).
			SetProtocolVersion(4).
			SetCleanSession(true).
			SetAutoReconnect(false).
			SetConnectTimeout(timeout)
		if *username != "" {
			opts.SetUsername(*username).SetPassword(*password)
		}
		if onMessage != nil {
			opts.SetDefaultPublishHandler(onMessage)
		}
		c := mqtt.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(timeout) || tok.Error() != nil {
			fail("%s connect: %v %s", suffix, tok.Error(), what)
		}
		return c
	}

	received := make(chan []byte, 1)
	sub := newClient("sub", nil)
	defer sub.Disconnect(250)
	tok := sub.Subscribe(*topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case received <- m.Payload():
		default:
		}
	})
	if !tok.WaitTimeout(timeout) || tok.Error() != nil {
		fail("subscribe: %v %s", tok.Error(), what)
	}
	pub := newClient("pub", nil)
	if tok := pub.Publish(*topic, 1, false, *message); !tok.WaitTimeout(timeout) || tok.Error() != nil {
		fail("publish: %v %s", tok.Error(), what)
	}
	pub.Disconnect(250)

	select {
	case payload := <-received:
		if string(payload) != *message {
			fail("received %q, not %q %s", payload, *message, what)
		}
		fmt.Printf("OK: Eclipse Paho Go received '%s' on '%s' %s\n", *message, *topic, what)
	case <-time.After(timeout):
		fail("the message did not arrive within %v %s", timeout, what)
	}
}
