"""Interoperability matrix: every client example × broker × TLS mode × MQTT version.

``python -m interop.run`` (``make interop``) starts tlsgate in front of mosquitto, amqtt and a
private RabbitMQ node, runs the programs in ``examples/`` through it and prints the matrix.
``tests/e2e/test_interop.py`` runs a representative subset in CI with the same code.
"""
