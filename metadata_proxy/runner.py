"""Running the daemon in this process: the event loop, the signal handlers, and the exit status.

SIGTERM and SIGINT stop (in-flight requests finish), SIGHUP reloads. The handlers are installed on the loop
before anything else happens; until then SIGHUP is ignored (cli.py), so that a reload signal that comes while
the process is still importing cannot end it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from metadata_proxy.config import ServeConfig
from metadata_proxy.daemon import Daemon
from metadata_proxy.errors import EXIT_OK, ConfigError, StartupError, report
from metadata_proxy.listeners import Listener

log = logging.getLogger("metadata_proxy")


def announce(listeners: list[Listener]) -> None:
    """The lines a user copies, on stdout: one export per variable, a comment naming each role if several."""
    for listener in listeners:
        if len(listeners) > 1:
            print(f"# {listener.role.name}: {listener.role.role_arn}")
        for name, value in listener.exports:
            print(f"export {name}={value}")
    sys.stdout.flush()


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (the `fast` extra) or asyncio's own loop; "auto" uses uvloop when installed."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--event-loop uvloop: uvloop is not installed "
                              "(pip install 'metadata-proxy[fast]')") from None
        return None
    log.info("event loop: uvloop %s", uvloop.__version__)
    return uvloop.new_event_loop


def run_daemon(config: ServeConfig, load_config: Callable[[], ServeConfig] | None = None) -> int:
    """Runs the daemon in this process until SIGTERM/SIGINT (SIGHUP reloads); returns the exit status."""

    async def main() -> None:
        daemon = Daemon(config, load_config=load_config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.request_stop)
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
        await daemon.run(on_ready=announce)

    try:
        with asyncio.Runner(loop_factory=event_loop_factory(config.event_loop)) as runner:
            runner.run(main())
    except (ConfigError, StartupError) as error:
        return report(error)
    return EXIT_OK
