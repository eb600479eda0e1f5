"""View state in the URL: the Run, trace, item, layer, head and each page's controls, so that a reload or a
copied link opens the same view.

Three parts:

* pages write their state into the address bar as it changes (:func:`sync_url`: a clientside callback that
  replaces the current history entry, so no request and no navigation);
* page layouts read their controls from the query (Dash pages pass it to ``layout(**query)``), and the shell
  reads the Run, trace and item in :func:`url_state` from the layout request's ``Referer``, which for the
  renderer's same-origin fetch is the page's own address: the shell is built before any callback runs, so the
  first callbacks already see the Run of the link;
* ``assets/viewstate.js`` carries the shared keys (:data:`SHARED_KEYS`) across the page links, marks the
  active page, and names downloads after ``layout.meta.export``.

A Run switch (the user picks another Run) resets page controls that only mean something for one Run
(:func:`run_switched`); a page load keeps what the URL says.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import dash
from dash import Input, Output

from . import ids

#: Query keys every page understands and the page links carry.
SHARED_KEYS = ("run", "trace", "item", "layer", "head")


def url_state() -> dict[str, str]:
    """The query of the page being loaded (first value per key), from the layout request's ``Referer``;
    ``{}`` outside a request, or when the referrer is another site or missing."""
    try:
        from flask import request

        referrer = request.referrer
        host = request.host
    except RuntimeError:  # no request (tests building the shell directly)
        return {}
    if not referrer:
        return {}
    parts = urlsplit(referrer)
    if parts.netloc and parts.netloc != host:
        return {}
    return {k: v[0] for k, v in parse_qs(parts.query).items() if v}


def run_switched() -> bool:
    """True inside a callback fired because the user picked another Run (not on a page load)."""
    try:
        triggered = dash.ctx.triggered
    except Exception:  # called outside a Dash callback (tests): no switch
        return False
    return any(t.get("prop_id") == f"{ids.RUN}.value" for t in triggered or [])


def wanted(current, options: list[dict], requested, default):
    """A dropdown's value: ``default`` after a Run switch; else the current value when it is an option, else the
    value the URL requested (``requested``, a query string) when it is one, else ``default``.

    Dash's Dropdown drops a value it has no option for, so one given in the layout before its options arrive is
    lost; pages keep the URL's value in a store and pass it here.
    """
    values = [o["value"] for o in options]
    if run_switched():
        return default
    if current in values:
        return current
    for candidate in (requested, _as_number(requested)):
        if candidate is not None and candidate in values:
            return candidate
    return default


def _as_number(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def as_list(value) -> list[str]:
    """A multi-valued control's value from the query (``"a,b"``) or from the control (a list)."""
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split(",")


def sync_url(store_id: str, params: dict[str, str]) -> None:
    """Keep the address bar in step with a page: shared keys plus ``params`` (``{query key: component id}``,
    each component's ``value``). Call once per page at import; put ``dcc.Store(id=store_id)`` in its layout."""
    names = ["run", "trace", "item", *params]
    dash.clientside_callback(
        "function() { return window.attnlab.syncUrl(" + json.dumps(names) + ", Array.from(arguments)); }",
        Output(store_id, "data"),
        Input(ids.RUN, "value"), Input(ids.TRACE, "value"), Input(ids.ITEM, "value"),
        *[Input(component, "value") for component in params.values()])
