"""`vipd run | check | resign | import | demo | manifest`."""
from __future__ import annotations

import inspect
import sys
from typing import Callable

import typer

from vipd import __version__
from vipd.config import DEFAULT_PATH, EXIT_REFUSED

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="VRRP virtual IP daemon with a built-in L4 load balancer (keepalived + nginx in one).")

ConfigOption = typer.Option(DEFAULT_PATH, "-c", "--config", help="The TOML config file.")
FileOnlyOption = typer.Option(False, "--file-only", help="Check the file alone, not against this host "
                              "(its programs, interfaces, addresses): for a config meant for another machine.")

CHECK_HELP = f"""
\b
Exit status: 0 when the config is good, {EXIT_REFUSED} when it is refused.
Each problem (what can never work) is one line on stderr:
  FILE: key.path: reason
Each warning (what may be fine at run time, such as an interface that
is not there yet) is one line on stderr too, and refuses nothing:
  FILE: WARNING: key.path: reason"""

RUN_HELP = f"""
\b
Exit status: 0 after SIGTERM or SIGINT, 1 when a part cannot start,
{EXIT_REFUSED} when the config is refused (as `check` refuses it: one line per problem);
the config's warnings are logged at start."""


def summarized(typer_app: typer.Typer, name: str | None = None, details: str = "") -> Callable:
    """`typer_app.command`, with the docstring's whole first line as the summary in `--help`
    (click cuts it at the first period or 45 characters) and `details` after the docstring."""
    def register(function: Callable) -> Callable:
        doc = inspect.cleandoc(function.__doc__ or "")
        return typer_app.command(name, short_help=doc.split("\n\n")[0].replace("\n", " "),
                                 help=doc + "\n" + details if details else doc)(function)
    return register


def check_config(path: str, summary: Callable, file_only: bool, **required: bool) -> None:
    """`vipd check` / `lbproxy check`: problems and warnings on stderr, the verdict on stdout."""
    from vipd.config import THIS_HOST, ConfigError, load
    try:
        loaded = load(path, host=None if file_only else THIS_HOST, **required)
    except ConfigError as exc:
        for line in exc.problems + exc.warnings:
            typer.echo(line, err=True)
        raise typer.Exit(EXIT_REFUSED)
    for line in loaded.warnings:
        typer.echo(line, err=True)
    typer.echo(f"{path}: ok ({summary(loaded)})")


@summarized(app, details=RUN_HELP)
def run(config: str = ConfigOption) -> None:
    """Run every [[vrrp]] instance and [[frontend]] of the config, in the foreground."""
    from vipd.daemon import run_daemon
    raise typer.Exit(run_daemon(config, with_vrrp=True))


@summarized(app, details=CHECK_HELP)
def check(config: str = ConfigOption, file_only: bool = FileOnlyOption) -> None:
    """Validate a config and exit: 0 when good (warnings included), 2 when refused."""
    check_config(config, lambda c: f"{len(c.vrrp)} vrrp instance(s), {len(c.frontends)} frontend(s)"
                 + (f", {len(c.elections)} election(s)" if c.elections else ""),
                 file_only, require_vrrp=True)


RESIGN_HELP = f"""
\b
Exit status: 0 when done (also when there was nothing to do), 1 when it
cannot (no privileges, no netlink), {EXIT_REFUSED} when the config is refused.
One line per instance on stdout says what was done."""


@summarized(app, details=RESIGN_HELP)
def resign(
    config: str = ConfigOption,
    only_if_failed: bool = typer.Option(
        False, "--only-if-failed",
        help="For systemd's ExecStopPost: do nothing when $SERVICE_RESULT is `success` (the daemon "
             "stopped cleanly and resigned itself)."),
) -> None:
    """After the daemon died: remove the VIPs it left and send a priority-0 advert for each.

    Only addresses vipd added are removed, and an instance that had none left (this node was not
    master) sends no advert. A backup then takes over after Skew_Time, not Master_Down_Interval."""
    import asyncio
    import os

    from vipd.config import ConfigError, load
    from vipd.resign import CLEAN_STOP
    from vipd.resign import resign as resign_all
    from vipd.vrrp.links import VrrpError
    if only_if_failed and os.environ.get("SERVICE_RESULT") == CLEAN_STOP:
        return
    try:
        loaded = load(config, require_vrrp=True, host=None)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(EXIT_REFUSED)
    try:
        outcomes = asyncio.run(resign_all(loaded.vrrp))
    except VrrpError as exc:
        typer.echo(f"vipd resign: {exc}", err=True)
        raise typer.Exit(1)
    for outcome in outcomes:
        typer.echo(outcome.line())


@summarized(app, "import")
def import_config(
    keepalived: str = typer.Option(None, "--keepalived", metavar="FILE", help="A keepalived.conf."),
    nginx: str = typer.Option(None, "--nginx", metavar="FILE", help="An nginx.conf with a stream block."),
    haproxy: str = typer.Option(None, "--haproxy", metavar="FILE", help="A haproxy.cfg with mode tcp proxies."),
) -> None:
    """Translate keepalived, nginx stream and HAProxy tcp configs into one vipd TOML on stdout."""
    from vipd.migrate import InputError, translate
    if not (keepalived or nginx or haproxy):
        typer.echo("vipd import: give at least one of --keepalived, --nginx, --haproxy", err=True)
        raise typer.Exit(2)
    try:
        result = translate(keepalived, nginx, haproxy)
    except InputError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    except (RecursionError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        typer.echo(f"vipd import: internal error ({type(exc).__name__}: {exc}); please report it", err=True)
        raise typer.Exit(1)
    for line in result.notes:
        typer.echo(line, err=True)
    if result.toml is None:
        typer.echo("vipd import: nothing to translate (no vrrp_instance, stream server or tcp frontend)", err=True)
        raise typer.Exit(2)
    if result.problems:
        typer.echo("vipd import: the translation does not pass vipd check (a bug in vipd import):", err=True)
        for problem in result.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1)
    typer.echo(result.toml, nl=False)


@summarized(app)
def demo(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print the daemons' logs."),
    plot: str = typer.Option(None, "--plot", metavar="FILE",
                             help="Also draw what the client saw as an image (PNG, SVG or PDF by FILE's "
                                  "suffix; needs matplotlib)."),
) -> None:
    """Build a namespace lab (2 edges, 3 backends, 1 client), fail the master over, report."""
    from vipd.lab.demo import run_demo
    raise typer.Exit(run_demo(verbose=verbose, plot=plot))


manifest_app = typer.Typer(no_args_is_help=True, help="Print a deployment manifest for a config.")
app.add_typer(manifest_app, name="manifest")


@summarized(manifest_app, "static-pod")
def static_pod(
    config: str = ConfigOption,
    image: str = typer.Option(None, "--image", help="The container image with vipd in it "
                              "(default: localhost/vipd:VERSION, built by packaging/container/Containerfile)."),
) -> None:
    """Print a kubeadm static pod (YAML) that runs this config: for /etc/kubernetes/manifests/vipd.yaml."""
    from vipd.config import ConfigError, load
    from vipd.manifest import DEFAULT_IMAGE, static_pod_yaml
    try:
        # The file alone: the pod runs in its image, whose programs this host does not show.
        loaded = load(config, require_vrrp=True, host=None)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(EXIT_REFUSED)
    typer.echo(static_pod_yaml(loaded, image or DEFAULT_IMAGE), nl=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vipd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
