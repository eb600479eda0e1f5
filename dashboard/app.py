"""The Dash app: a shell (navigation, Run / trace / item selectors) around one Dash page per view.

The shell's selectors are shared by every page; pages read them as callback inputs. The app's data
(:class:`~attnlab.dashboard.data.DashboardData`: allowed roots, caches) hangs on the Flask server as
``server.extensions["attnlab"]`` and is reached from callbacks with :func:`current_data`.

Example:
    >>> app = create_app(["runs"])                 # doctest: +SKIP
    >>> app.run(host="127.0.0.1", port=8050)        # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import dash
from dash import Input, Output, State, dcc, html

from . import ids
from .data import EXTENSION_KEY, DashboardData, trace_header
from .errors import guarded

# not resolve(): under the strict editable install __file__ sits in a link tree, and Dash derives page module
# names from the pages folder relative to the package root it finds there
HERE = Path(__file__).absolute().parent


def current_data() -> DashboardData:
    """The data object of the app serving the current request (or the app context in tests)."""
    from flask import current_app

    return current_app.extensions[EXTENSION_KEY]


#: Host names the dashboard always answers to (a request naming another host is refused: DNS rebinding guard).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def create_app(run_dirs: Iterable[str | Path], *, title: str = "attnlab dashboard",
               data: DashboardData | None = None, host: str | None = None) -> dash.Dash:
    """Build the dashboard over the Runs under ``run_dirs`` (only those are ever served).

    Args:
        run_dirs: Run directories or folders holding Runs.
        title: browser tab title.
        data: a prepared :class:`DashboardData` (tests); built from ``run_dirs`` otherwise.
        host: the address given to ``--host``; requests must name it, ``127.0.0.1``, ``localhost`` or ``::1`` in
            their ``Host`` header, so a web page from elsewhere cannot reach the Runs by re-pointing its own domain
            name at this machine (DNS rebinding).

    Returns:
        The Dash app; ``app.run(host=..., port=...)`` serves it.

    Raises:
        ValueError: a directory that does not exist.
    """
    from flask import Flask

    data = data or DashboardData(run_dirs)
    # Flask cannot locate a package inside the implicit ``attnlab`` namespace on its own: give it the paths.
    server = Flask("attnlab.dashboard", root_path=str(HERE), instance_path=str(HERE / "instance"))
    app = dash.Dash("attnlab.dashboard", server=server, use_pages=True, pages_folder=str(HERE / "pages"),
                    assets_folder=str(HERE / "assets"), title=title, update_title=None,
                    suppress_callback_exceptions=True)
    app.server.extensions[EXTENSION_KEY] = data
    _guard_host(server, allowed_hosts(host))
    app.layout = lambda: shell(data)
    _register_shell_callbacks(app)
    return app


def allowed_hosts(host: str | None) -> set[str]:
    """Loopback names, ``host``, and for a wildcard ``host`` (``0.0.0.0``, ``::``) this machine's own names and
    addresses (the only names a client elsewhere can reach it by without a rebinding domain)."""
    import socket

    names = {*LOCAL_HOSTS, *([host.lower()] if host else [])}
    if host in ("0.0.0.0", "::"):
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            try:
                names.update(info[4][0] for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    return names


def _guard_host(server, allowed: set[str]) -> None:
    from flask import abort, request

    def check_host():
        name = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        if name.strip("[]").lower() not in allowed:
            abort(403, description="This dashboard answers only to the host names it was started for.")

    server.before_request(check_host)


def warm_up() -> None:
    """Import what the first views need (scikit-learn, scipy, plotly's validators) ahead of the first click."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from attnlab.probes import qk_embedding, sinks  # noqa: F401  (imports scikit-learn and scipy)

    make_subplots(rows=1, cols=2).add_trace(go.Heatmap(z=[[0]]), row=1, col=1).to_json()
    go.Figure([go.Scatter(x=[0], y=[0]), go.Bar(x=[0], y=[0]), go.Image(z=[[[0, 0, 0]]])]).to_json()


def _default_run(refs) -> str | None:
    for ref in refs:
        if "minilm" in ref.label:
            return ref.run_id
    return refs[0].run_id if refs else None


def shell(data: DashboardData) -> html.Div:
    """The frame around every page (built per page load, so new Runs appear on reload).

    The selectors get their values here, not from callbacks: a page's callbacks fire when the page is
    inserted, and must then see the Run, trace and item already chosen (those of the page's URL, when it
    names them: :func:`~attnlab.dashboard.viewstate.url_state`).
    """
    from .viewstate import url_state
    from .widgets import as_int

    refs = data.runs()
    wanted = url_state()
    run_id = wanted["run"] if wanted.get("run") in {r.run_id for r in refs} else _default_run(refs)
    traces, trace, items, item = [], None, [], None
    if run_id is not None:
        try:
            traces, trace, _ = choose_trace(run_id, wanted.get("trace"), data)
            items, item = choose_item(run_id, trace, as_int(wanted.get("item")), data)
        except ValueError:
            pass
    links = [dcc.Link(page["name"], href=page["relative_path"], className="nav-link")
             for page in dash.page_registry.values()]
    selectors = html.Div([
        html.Label(["Run", dcc.Dropdown(id=ids.RUN, options=[{"label": r.label, "value": r.run_id} for r in refs],
                                        value=run_id, clearable=False)], className="selector selector-run"),
        html.Label(["Trace", dcc.Dropdown(id=ids.TRACE, options=traces, value=trace, clearable=False)],
                   className="selector"),
        html.Label(["Item", dcc.Dropdown(id=ids.ITEM, options=items, value=item, clearable=False)],
                   className="selector selector-item"),
    ], className="selectors")
    return html.Div([
        dcc.Location(id=ids.NAV, refresh="callback-nav"),
        html.Header([html.Div([html.Span("attnlab", className="brand"),
                               html.Nav(links, id=ids.PAGE_LINKS, className="nav", **{"aria-label": "pages"})],
                              className="topbar"),
                     selectors, html.Div(_hint(data, run_id), id=ids.RUN_HINT, className="run-hint", role="status")]),
        html.Main(dash.page_container, className="page"),
    ], className="app")


def _hint(data: DashboardData, run_id) -> str:
    try:
        return choose_trace(run_id, None, data)[2]
    except ValueError:
        return ""


def choose_trace(run_id, current, data: DashboardData | None = None) -> tuple[list[dict], str | None, str]:
    """Trace options of a Run, the trace to show (the current one when the Run has it) and a one-line hint."""
    if run_id is None:
        return [], None, "No Runs found under the served directories."
    run = (data or current_data()).run(run_id)
    names = run.trace_names
    value = current if current in names else ("main" if "main" in names else (names[0] if names else None))
    model = run.info.model
    hint = (f"{Path(str(model.get('name', '?'))).name} ({model.get('family', '?')}, {model.get('n_layers', '?')} layers x "
            f"{model.get('n_heads', '?')} heads)" + (f", plan {run.info.plan.get('name')}" if run.info.plan else "")
            + ("" if names else " — results only"))
    return [{"label": n, "value": n} for n in names], value, hint


def choose_item(run_id, trace, current, data: DashboardData | None = None) -> tuple[list[dict], int | None]:
    """Batch-item options of a trace (a text preview each) and the item to show."""
    try:
        header = trace_header((data or current_data()).run(run_id), trace)
    except (ValueError, TypeError, KeyError):
        return [], None
    options = [{"label": f"{b}: {_preview(tokens)}", "value": b} for b, tokens in enumerate(header["tokens"])]
    return options, current if isinstance(current, int) and 0 <= current < len(options) else 0


def _register_shell_callbacks(app: dash.Dash) -> None:
    # the layout already holds the first values; these run when the user changes the Run or the trace
    app.callback(Output(ids.TRACE, "options"), Output(ids.TRACE, "value"), Output(ids.RUN_HINT, "children"),
                 Input(ids.RUN, "value"), State(ids.TRACE, "value"),
                 prevent_initial_call=True)(guarded([], None)(choose_trace))
    app.callback(Output(ids.ITEM, "options"), Output(ids.ITEM, "value"), Input(ids.RUN, "value"),
                 Input(ids.TRACE, "value"), State(ids.ITEM, "value"),
                 prevent_initial_call=True)(guarded([], None, report=False)(choose_item))


def _preview(tokens: list[str], width: int = 48) -> str:
    text = " ".join(t for t in tokens if not t.startswith("patch(") and t != "<image>")
    return text if len(text) <= width else text[: width - 1] + "…"
