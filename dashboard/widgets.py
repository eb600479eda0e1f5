"""Small layout helpers shared by the pages (components, not figures)."""

from __future__ import annotations

import pandas as pd
from dash import dash_table, dcc, html

from .data import meta_of

GRAPH_CONFIG = {"displaylogo": False,
                "toImageButtonOptions": {"format": "png", "scale": 2}}


def page_header(title: str, description: str) -> html.Div:
    """The title and one-line description of a page."""
    return html.Div([html.H1(title), html.P(description, className="lead")], className="page-header")


def graph(component_id: str, label: str, **style) -> html.Div:
    """A graph with a loading indicator, in a container labelled for screen readers."""
    extra = {"style": style} if style else {}
    return html.Div(dcc.Loading(dcc.Graph(id=component_id, config=GRAPH_CONFIG, **extra),
                                delay_show=300, type="dot"), role="figure", **{"aria-label": label})


def control(label: str, component) -> html.Div:
    """A labelled control."""
    return html.Div([html.Label(label, htmlFor=getattr(component, "id", None), className="control-label"), component],
                    className="control")


def radio(component_id: str, options=None, value=None) -> dcc.RadioItems:
    """Inline radio buttons (keyboard: Tab to the group, arrows or Space to choose)."""
    return dcc.RadioItems(id=component_id, options=options or [], value=value, inline=True, className="radio")


def message_area(component_id: str) -> html.Div:
    """Where a page's callbacks report errors and notes."""
    return html.Div(id=component_id, className="messages", **{"aria-live": "polite"})


def layer_options(header: dict) -> list[dict]:
    """Options for the captured layers of a trace."""
    return [{"label": str(i), "value": int(i)} for i in header["layers"]]


def head_options(header: dict) -> list[dict]:
    """Options for the heads of a trace's model."""
    return [{"label": str(h), "value": h} for h in range(meta_of(header).n_heads)]


def keep(current, options: list[dict], default=None):
    """``current`` when it is one of the options' values, else ``default`` (or the first option)."""
    values = [o["value"] for o in options]
    if current in values:
        return current
    if default in values:
        return default
    return values[0] if values else None


def as_int(value, default: int | None = None) -> int | None:
    """An int from a query-string value (``None`` when absent or malformed)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def table(component_id: str, frame: pd.DataFrame, page_size: int = 12, **kwargs) -> dash_table.DataTable:
    """A sortable table of a DataFrame (floats rounded for reading)."""
    data, columns = table_data(frame)
    return dash_table.DataTable(
        id=component_id, data=data, columns=columns,
        page_size=page_size, sort_action="native", style_table={"overflowX": "auto"},
        style_cell={"fontFamily": "inherit", "fontSize": 13, "padding": "4px 8px", "textAlign": "left"},
        style_header={"fontWeight": "bold"}, **kwargs)


def table_data(frame: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """``(data, columns)`` of a DataTable for a DataFrame, as callbacks return them."""
    shown = frame.copy()
    for col in shown.select_dtypes("float").columns:
        shown[col] = shown[col].round(4)
    for col in shown.columns:
        if shown[col].dtype == object:
            shown[col] = shown[col].map(lambda v: v if isinstance(v, (str, int, float, type(None))) else str(v))
    return shown.to_dict("records"), [{"name": str(c), "id": str(c)} for c in shown.columns]


def token_options(header: dict, item: int, positions) -> list[dict]:
    """Dropdown options for the real tokens of an item (``value`` = position)."""
    tokens = header["tokens"][item]
    return [{"label": f"{int(n)}: {tokens[int(n)]}", "value": int(n)} for n in positions]


def timing_bars(timings: dict[str, float]) -> html.Div:
    """Seconds per phase of a Run as a table of HTML bars (no plotly: the landing page renders before
    plotly.js, ~5 MB, has been loaded and parsed on a first visit).

    Args:
        timings: ``{phase: seconds}``; empty: a note instead of bars.
    """
    if not timings:
        return html.P("This Run recorded no timings.", className="note")
    longest = max(max(float(s) for s in timings.values()), 1e-9)
    rows = [html.Tr([html.Th(name), html.Td(html.Div(className="timing-bar", title=f"{float(s):.3f} s",
                                                     style={"width": f"{100 * float(s) / longest:.1f}%"})),
                     html.Td(f"{float(s):.3f} s", className="timing-value")]) for name, s in timings.items()]
    return html.Div([html.H3("Timings"), html.Table(html.Tbody(rows), className="plain timings",
                                                    **{"aria-label": "seconds per phase"})])
