"""`lbproxy run | check`: only the [[frontend]] part of the config, for a host that keeps another
VRRP daemon. The same daemon runner as `vipd run`, without VRRP; it lives here, in the composition
root, so that lbproxy itself never imports vipd."""
from __future__ import annotations

import sys

import typer

from vipd.cli import CHECK_HELP, RUN_HELP, FileOnlyOption, check_config, summarized

DEFAULT_PATH = "/etc/vipd/lbproxy.toml"     # where systemd/lbproxy.service reads it

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="L4 TCP load balancer with active health checks (the proxy half of vipd).")

ConfigOption = typer.Option(DEFAULT_PATH, "-c", "--config", help="The TOML config file.")


@summarized(app, details=RUN_HELP)
def run(config: str = ConfigOption) -> None:
    """Run every [[frontend]] of the config in the foreground (SIGHUP reloads, SIGTERM drains)."""
    from vipd.daemon import run_daemon
    raise typer.Exit(run_daemon(config, with_vrrp=False))


@summarized(app, details=CHECK_HELP)
def check(config: str = ConfigOption, file_only: bool = FileOnlyOption) -> None:
    """Validate a config for `lbproxy run` and exit: 0 when good (warnings included), 2 when refused."""
    check_config(config, lambda c: f"{len(c.frontends)} frontend(s)", file_only, require_frontend=True)


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
