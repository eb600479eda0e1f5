"""``attnlab dashboard [RUN_DIR ...]``: serve the Dash dashboard on 127.0.0.1 (the demo Runs without arguments)."""

from __future__ import annotations

import ipaddress
import threading
import webbrowser
from pathlib import Path

import typer

from .common import friendly

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Refuse a port another program already listens on, before anything is printed or built."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"--port {port} on {host} is in use by another program ({err.strerror}); "
                             "stop it or pick another --port") from None


def serve(run_dirs: list[Path], host: str = "127.0.0.1", port: int = 8050, open_browser: bool = True,
          progress: bool = True) -> None:
    """Build the app over ``run_dirs`` (the demo when empty) and serve it until interrupted."""
    from attnlab.dashboard.app import create_app, warm_up

    if not 0 < port < 65536:
        raise ValueError(f"--port {port} is not a TCP port; use 1-65535 (default 8050)")
    missing = [str(d) for d in run_dirs if not Path(d).is_dir()]
    if missing:
        raise ValueError(f"{', '.join(missing)}: not a directory; give Run directories or folders holding Runs")
    check_port(host, port)
    if not run_dirs:
        from attnlab.recipes.demo import build_demo_run

        run_dirs = [build_demo_run(progress=progress)]
    app = create_app(run_dirs, host=host)
    threading.Thread(target=warm_up, name="attnlab-warm-up", daemon=True).start()
    if not is_loopback(host):
        typer.echo(f"warning: serving on {host}: anyone who can reach this address can read the served Runs", err=True)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    typer.echo(f"attnlab dashboard on {url} (Ctrl+C to stop); serving {', '.join(str(d) for d in run_dirs)}")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    app.run(host=host, port=port, debug=False)


def register(app: typer.Typer) -> None:
    """Add ``dashboard`` to the CLI."""

    @app.command()
    @friendly
    def dashboard(
        run_dirs: list[Path] = typer.Argument(None, metavar="RUN_DIR",
                                              help="Run directories or folders holding Runs; none: the demo Runs"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to bind; other than loopback exposes the Runs"),
        port: int = typer.Option(8050, "--port", help="TCP port"),
        no_browser: bool = typer.Option(False, "--no-browser", help="do not open a web browser"),
    ):
        """Serve the dashboard over Runs (only the Runs under the given directories are served)."""
        serve(list(run_dirs or []), host=host, port=port, open_browser=not no_browser)
