"""`lbproxy run | check`: only the [[frontend]] part of the config, for a host that keeps another
VRRP daemon. The same daemon runner as `vipd run`, without VRRP; it lives here, in the composition
root, so that lbproxy itself never imports vipd."""
from __future__ import annotations

import sys

import typer

from vipd.config import DEFAULT_PATH

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="L4 TCP load balancer with active health checks (the proxy half of vipd).")


@app.command()
def run(config: str = typer.Option(DEFAULT_PATH, "-c", "--config", help="The TOML config file.")) -> None:
    """Run every [[frontend]] of the config in the foreground (SIGHUP reloads, SIGTERM drains)."""
    from vipd.daemon import run_daemon
    raise typer.Exit(run_daemon(config, with_vrrp=False))


@app.command()
def check(config: str = typer.Option(DEFAULT_PATH, "-c", "--config", help="The TOML config file.")) -> None:
    """Validate a config for `lbproxy run` and exit: 0 when good, else one line per problem."""
    from vipd.config import ConfigError, load
    try:
        loaded = load(config, require_frontend=True)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1)
    typer.echo(f"{config}: ok ({len(loaded.frontends)} frontend(s))")


@app.callback()
def _main() -> None:
    pass


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
