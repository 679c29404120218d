"""The command line: thin wrappers from flags to Config to the server or a tool."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .config import Config, ConfigError, load, load_default
from .config.load import default_text

DEV_CERTS = Path("var/dev-certs")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tlsgate")
def cli() -> None:
    """tlsgate: a TLS-terminating reverse proxy for MQTT."""


def _load(path: str | None) -> Config:
    try:
        return load(path) if path else load_default()
    except ConfigError as exc:
        click.echo(exc.render(), err=True)
        sys.exit(2)


def ensure_dev_certs() -> None:
    """Generate the demo's development PKI under var/dev-certs on first use."""
    if (DEV_CERTS / "server.pem").exists():
        return
    from .tls.certs import init_dir

    init_dir(DEV_CERTS, hosts=["localhost", "127.0.0.1"], clients=["client"])
    click.echo(f"generated development certificates in {DEV_CERTS}/ (CA: {DEV_CERTS}/ca.pem)",
               err=True)


@cli.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False),
              help="Config file (TOML). Without it: the embedded demo configuration.")
def serve(path: str | None) -> None:
    """Run the gateway."""
    from .server.run import serve as run

    if path is None:
        ensure_dev_certs()
        click.echo(
            "DEMO mode (no -c): embedded amqtt broker on 127.0.0.1:11883, one-way TLS on "
            "127.0.0.1:8883, mutual TLS on 127.0.0.1:8884. Try:\n"
            f"  mosquitto_sub -h localhost -p 8883 --cafile {DEV_CERTS}/ca.pem -t demo/# -v &\n"
            f"  mosquitto_pub -h localhost -p 8883 --cafile {DEV_CERTS}/ca.pem -t demo/hello "
            "-m 'hello through tlsgate'\n"
            f"  mosquitto_pub -h localhost -p 8884 --cafile {DEV_CERTS}/ca.pem "
            f"--cert {DEV_CERTS}/client.pem --key {DEV_CERTS}/client.key -t demo/mtls -m hi",
            err=True)
    config = _load(path)
    text = Path(path).read_text(encoding="utf-8") if path else default_text()
    sys.exit(run(config, path, text))


@cli.command("check-config")
@click.option("-c", "--config", "path", required=True, type=click.Path(dir_okay=False),
              help="Config file (TOML).")
def check_config(path: str) -> None:
    """Load a config file and everything it names (certificates, keys, CAs); list problems."""
    from .config.check import check, notes

    problems = check(path)
    if problems:
        click.echo(f"{path}: {len(problems)} problem(s)", err=True)
        for p in problems:
            click.echo(f"  {path}: {p}", err=True)
        sys.exit(2)
    for note in notes(path):
        click.echo(f"  note: {path}: {note}", err=True)
    click.echo(f"{path}: OK")


@cli.command("config-reference")
@click.option("--lang", type=click.Choice(["en", "zh"]), default="en", show_default=True,
              help="Language of the page.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the page to this file (default: standard output).")
@click.option("--check", is_flag=True,
              help="Compare with the file (--output, default docs/configuration.md or "
                   "docs/zh/configuration.md) instead of writing; exit 1 if it differs.")
@click.option("--todo", is_flag=True,
              help="zh: print reference_zh.py entries for missing or stale translations.")
def config_reference(lang: str, output: str | None, check: bool, todo: bool) -> None:
    """The configuration reference (Markdown), generated from the config schema."""
    from .config import reference as ref

    if todo:
        from .config.reference_zh import ZH

        click.echo(ref.todo(ref.tables(), ZH) or "# every key and table is translated")
        return
    try:
        text = ref.render("zh" if lang == "zh" else "en")
    except (ref.ReferenceError, ref.TranslationError) as exc:
        click.echo(f"config-reference: cannot generate the {lang} page:\n{exc}", err=True)
        if isinstance(exc, ref.TranslationError):
            click.echo("(`tlsgate config-reference --lang zh --todo` prints the entries to add)",
                       err=True)
        sys.exit(1)
    if check:
        path = Path(output or ref.OUTPUT[lang])
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            click.echo(f"{path}: cannot read it ({exc.strerror}); run `make docs`", err=True)
            sys.exit(1)
        if current != text:
            click.echo(f"{path} is not what the schema generates: run `make docs` and commit "
                       "the result", err=True)
            sys.exit(1)
        click.echo(f"{path}: up to date")
        return
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


def _attach_optional() -> None:
    try:
        from .certs_cli import certs
    except ImportError:  # pragma: no cover - always present in a full install
        return
    cli.add_command(certs)
    from .ctl import ctl  # admin API client (tlsgate/ctl.py)

    cli.add_command(ctl)


_attach_optional()


def main() -> None:
    cli()
