"""``tlsgate certs``: make a development PKI (``init``) and describe certificate files
(``inspect``).

The main CLI attaches this group with ``cli.add_command(certs)``. The commands are thin: all the
work and every check is in :mod:`tlsgate.tls.certs`, whose :class:`~tlsgate.tls.certs.CertError`
messages are printed as they are (exit status 1).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from tlsgate.tls.certs import (
    DEFAULT_CA_DAYS,
    DEFAULT_LEAF_DAYS,
    CertError,
    InitResult,
    KeyType,
    init_dir,
    inspect,
)

__all__ = ["certs", "next_steps"]


@click.group()
def certs() -> None:
    """Create and inspect certificates."""


@certs.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, metavar="NAME|IP",
              help="Server certificate subjectAltName, repeatable (DNS name, *.wildcard or IP "
                   "address). Default: localhost and 127.0.0.1.")
@click.option("--client", "clients", multiple=True, metavar="NAME",
              help="Make a client certificate NAME.pem/NAME.key with CN=NAME, repeatable. "
                   "Default: one client named 'client'.")
@click.option("--key-type", type=click.Choice(["ec", "rsa"]), default=None,
              help="Key algorithm: ec (P-256, the default) or rsa.")
@click.option("--rsa", "rsa_flag", is_flag=True, help="Same as --key-type rsa.")
@click.option("--rsa-bits", type=click.IntRange(min=2048), default=2048, show_default=True,
              help="RSA key size.")
@click.option("--days", type=click.IntRange(min=1), default=DEFAULT_LEAF_DAYS,
              show_default=True, help="Validity of the server and client certificates.")
@click.option("--ca-days", type=click.IntRange(min=1), default=DEFAULT_CA_DAYS,
              show_default=True, help="Validity of the CA certificate.")
@click.option("--force", is_flag=True, help="Replace files that already exist.")
@click.option("--sm2", is_flag=True,
              help="国密: an SM2 CA and SM2 sign + encryption certificate pairs for the server "
                   "and each client, for [listeners.gm.<name>] (made with the Tongsuo library "
                   "of the tongsuopy wheel; `cryptography` cannot make SM2 keys).")
def init_cmd(directory: Path, hosts: tuple[str, ...], clients: tuple[str, ...],
             key_type: str | None, rsa_flag: bool, rsa_bits: int, days: int, ca_days: int,
             force: bool, sm2: bool) -> None:
    """Create a CA, a server certificate and client certificates in DIRECTORY.

    Writes ca.pem, ca.key, server.pem (certificate, then chain), server.key and NAME.pem /
    NAME.key per client. Keys are unencrypted PEM (PKCS#8) with mode 0600. Existing files are
    never overwritten without --force.
    """
    if rsa_flag and key_type == "ec":
        raise click.UsageError("--rsa contradicts --key-type ec")
    kt: KeyType = "rsa" if rsa_flag or key_type == "rsa" else "ec"
    if sm2:
        _init_sm2(directory, hosts, clients, days, force)
        return
    try:
        result = init_dir(directory, hosts=hosts or ("localhost", "127.0.0.1"),
                          clients=clients or ("client",), key_type=kt, rsa_bits=rsa_bits,
                          days=days, ca_days=ca_days, force=force)
    except CertError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Wrote into {result.directory}:")
    width = max(len(p.name) for p in result.files)
    for path, what in _described(result):
        click.echo(f"  {path.name:<{width}}  {what}")
    click.echo()
    click.echo(next_steps(result))


def _init_sm2(directory: Path, hosts: tuple[str, ...], clients: tuple[str, ...], days: int,
              force: bool) -> None:
    from .tls.gm import GmUnavailableError
    from .tls.gm_certs import GmCertError, init_sm2_dir

    try:
        d = init_sm2_dir(directory, hosts or ("localhost", "127.0.0.1"), clients or ("client",),
                         days=days, force=force)
    except (GmCertError, GmUnavailableError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Wrote into {directory}:")
    for path in d.files():
        click.echo(f"  {path.name}")
    s = d.server
    click.echo("\nNext: a 国密 listener using these files (tlsgate.toml):\n\n"
               "  [listeners.gm.default]\n  bind = \"0.0.0.0:8884\"\n"
               "  [listeners.gm.default.ssl_options]\n"
               f"  sign_certfile = {_toml_str(s.sign_cert)}\n"
               f"  sign_keyfile = {_toml_str(s.sign_key)}\n"
               f"  enc_certfile = {_toml_str(s.enc_cert)}\n"
               f"  enc_keyfile = {_toml_str(s.enc_key)}\n"
               f"  cacertfile = {_toml_str(d.ca_cert)}\n"
               "\nand a client: python examples/gm/gm_publish.py --port 8884 "
               f"--cafile {d.ca_cert}")


def _described(r: InitResult) -> list[tuple[Path, str]]:
    algo = "EC P-256" if r.key_type == "ec" else "RSA"
    out = [(r.ca_cert, "CA certificate (cacertfile for tlsgate and for clients)"),
           (r.ca_key, f"CA private key ({algo}) -- keep it offline in production"),
           (r.server_cert, f"server certificate for {', '.join(r.hosts)}"),
           (r.server_key, "server private key")]
    for name, (cert, key) in r.clients.items():
        out += [(cert, f"client certificate, CN={name}"), (key, f"client private key ({name})")]
    return out


def next_steps(r: InitResult, port: int = 8883) -> str:
    """The hint printed after ``init``: a listener using the files, and a client command."""
    first_client = next(iter(r.clients), None)
    plain = [h for h in r.hosts if not h.startswith("*.")]
    host = plain[0] if plain else (r.hosts[0].replace("*", "mqtt", 1) if r.hosts
                                   else "localhost")
    lines = [
        "Next: a mutual-TLS listener using these files (tlsgate.toml):",
        "",
        "  [listeners.ssl.default]",
        f'  bind = "0.0.0.0:{port}"',
        '  upstream = "default"',
        "  [listeners.ssl.default.ssl_options]",
        f"  certfile = {_toml_str(r.server_cert)}",
        f"  keyfile = {_toml_str(r.server_key)}",
        f"  cacertfile = {_toml_str(r.ca_cert)}",
        '  verify = "verify_peer"',
        "  fail_if_no_peer_cert = true",
        "",
    ]
    if first_client is not None:
        cert, key = r.clients[first_client]
        cmd = ["mosquitto_pub", "-h", host, "-p", str(port), "--cafile", str(r.ca_cert),
               "--cert", str(cert), "--key", str(key), "-t", "test", "-m", "hello"]
        lines += ["and a client to try it:", "", "  " + shlex.join(cmd)]
    else:
        cmd = ["mosquitto_pub", "-h", host, "-p", str(port), "--cafile", str(r.ca_cert),
               "-t", "test", "-m", "hello"]
        lines += ["and a client to try it (one-way TLS: set verify = \"verify_none\" and drop "
                  "fail_if_no_peer_cert above):", "", "  " + shlex.join(cmd)]
    return "\n".join(lines)


def _toml_str(p: Path) -> str:
    s = str(p)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@certs.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def inspect_cmd(file: Path) -> None:
    """Describe the certificates, CRLs and keys in FILE (PEM or DER).

    Shows subject, issuer, serial, SANs, key type and size, validity with days left (EXPIRED
    once past), EKU, CRL distribution points, OCSP URL, must-staple, SHA-256 fingerprint, and
    whether a chain is in the right order. Never prints key material.
    """
    try:
        click.echo(inspect(file), nl=False)
    except CertError as e:
        raise click.ClickException(str(e)) from None
