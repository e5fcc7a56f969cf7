"""`vipd import`: an existing keepalived.conf, nginx `stream` and HAProxy `mode tcp` config
translated into one vipd TOML; everything that is not translated is named with its FILE:LINE."""
from vipd.migrate.compose import Result, translate
from vipd.migrate.source import InputError

__all__ = ["InputError", "Result", "translate"]
