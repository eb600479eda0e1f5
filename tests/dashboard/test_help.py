"""Every control and statistic of the dashboard carries a help popover, and the texts cite the papers they follow."""

from __future__ import annotations

import re
import sys

import pytest
from dash import dcc

from attnlab.dashboard import ids
from attnlab.dashboard.help_texts import CONTROLS, STATISTICS, VIEWS
from attnlab.dashboard.summaries import STAT_LABELS

PAGES = ("runs", "heads", "attention", "flow", "sinks", "qk", "circuits", "interventions")
#: what a reader sets: every one must sit in a labelled control with a "?".
INPUTS = (dcc.Dropdown, dcc.RadioItems, dcc.Checklist, dcc.Slider, dcc.RangeSlider, dcc.Input)
#: help text -> the paper it must cite (author, year), where the issue names one.
CITED = {
    ("CONTROLS", ids.FLOW_METHOD): "Abnar & Zuidema 2020", ("CONTROLS", ids.FLOW_FUSION): "Abnar & Zuidema 2020",
    ("CONTROLS", ids.FLOW_DISCARD): "Abnar & Zuidema 2020", ("CONTROLS", ids.FLOW_OPTIONS): "Abnar & Zuidema 2020",
    ("CONTROLS", ids.ATTN_SINK): "Xiao et al. 2024", ("CONTROLS", ids.SINKS_RULE): "Yu et al. 2024",
    ("CONTROLS", ids.SINKS_LAYER): "Darcet et al. 2024", ("CONTROLS", ids.SINKS_COMPARE): "Darcet et al. 2024",
    ("CONTROLS", ids.QK_LAYER): "Yeh et al. 2023", ("CONTROLS", ids.QK_HEAD): "Yeh et al. 2023",
    ("CONTROLS", ids.QK_COLOUR): "Yeh et al. 2023", ("CONTROLS", ids.QK_METHOD): "Yeh et al. 2023",
    ("CONTROLS", ids.CIRCUITS_MIN): "Franco & Crovella 2024", ("CONTROLS", ids.IV_METRIC): "Li et al. 2023",
    ("VIEWS", "massive"): "Sun et al. 2024", ("VIEWS", "registers"): "Darcet et al. 2024",
    ("VIEWS", "pope"): "Li et al. 2023", ("VIEWS", "chair"): "Rohrbach et al. 2018",
    ("VIEWS", "patching"): "Wang et al. 2022",
    ("STATISTICS", "induction"): "Olsson et al. 2022", ("STATISTICS", "previous_token"): "Olsson et al. 2022",
    ("STATISTICS", "vhd"): "He et al. 2025", ("STATISTICS", "patching"): "Wang et al. 2022",
    ("STATISTICS", "sinks"): "Xiao et al. 2024", ("STATISTICS", "first"): "Xiao et al. 2024",
    ("STATISTICS", "entropy"): "Clark et al. 2019", ("STATISTICS", "image"): "Chen et al. 2024",
}
TEXTS = {"CONTROLS": CONTROLS, "VIEWS": VIEWS, "STATISTICS": STATISTICS}


def _layout(name: str):
    return sys.modules[f"attnlab.dashboard.pages.{name}"].layout()


def _children(component) -> list:
    children = getattr(component, "children", None)
    return [c for c in (children if isinstance(children, (list, tuple)) else [children]) if hasattr(c, "to_plotly_json")]


def _walk(component, ancestors=()):
    """``(component, its ancestors)`` for every Dash component below ``component``, itself included."""
    yield component, ancestors
    for child in _children(component):
        yield from _walk(child, (*ancestors, component))


def _tip(component) -> str | None:
    """The popover text of a ``help`` span (what the CSS shows and screen readers read), else ``None``."""
    props = component.to_plotly_json()["props"]
    if "help" not in (props.get("className") or "").split():
        return None
    assert props.get("data-help") == props.get("title") == props.get("aria-label"), props
    return props.get("data-help")


def _tips(component) -> list[str]:
    return [text for c, _ in _walk(component) if (text := _tip(c)) is not None]


def _controls(layout) -> list:
    return [c for c, _ in _walk(layout) if "control" in (getattr(c, "className", None) or "").split()]


@pytest.mark.parametrize("name", PAGES)
def test_every_control_has_a_help_popover(ctx, name):
    """Each input on the page sits in a labelled control whose label holds a "?" with non-empty text, and that
    text is the one :mod:`attnlab.dashboard.help_texts` keeps for the control's id (the Heads statistic's "?"
    shows the chosen statistic's)."""
    layout = _layout(name)
    inputs = [(c, a) for c, a in _walk(layout) if isinstance(c, INPUTS)]
    assert inputs or name == "runs"
    for component, ancestors in inputs:
        owner = [a for a in ancestors if "control" in (getattr(a, "className", None) or "").split()]
        assert owner, f"{name}: {component.id} is not in a labelled control"
    for control in _controls(layout):
        label = _children(control)[0]
        tips = _tips(label)
        assert len(tips) == 1 and len(tips[0].split()) >= 8, (name, label)
        component = _children(control)[1]
        assert tips[0] == CONTROLS[component.id] or component.id == ids.HEADS_STAT, (name, component.id)


def test_each_help_text_is_used_and_cites_its_paper(ctx):
    """No text in the one place is orphaned: every control text has its control on a page, every view text its
    "?" on a page; and each text cites the paper the view follows."""
    shown = {text for name in PAGES for text in _tips(_layout(name))}
    assert {text for key, text in CONTROLS.items() if key != ids.HEADS_STAT} <= shown
    assert {VIEWS[k] for k in ("massive", "registers", "pope", "chair", "patching")} <= shown
    for (kind, key), paper in CITED.items():
        assert paper in TEXTS[kind][key], (kind, key, paper)
    for text in [*CONTROLS.values(), *VIEWS.values(), *STATISTICS.values()]:
        assert not re.search(r"\b[\w/]+\.(py|md)\b", text), text  # papers, never files


def test_the_statistic_popover_follows_the_chosen_statistic(ctx):
    """Every statistic the Heads page can show has its own text; the "?" beside the selector and the option's
    hover show the chosen one."""
    heads = sys.modules["attnlab.dashboard.pages.heads"]
    assert set(STATISTICS) == set(STAT_LABELS)
    assert len(set(STATISTICS.values())) == len(STATISTICS)
    for stat, text in STATISTICS.items():
        assert _tips(heads.stat_help(stat)) == [text]
    assert _tips(heads.stat_help(None)) == [CONTROLS[ids.HEADS_STAT]]
    options, value, _ = heads.stat_options("0:toy-gpt-tables", "main", None)
    assert {o["value"] for o in options} >= {"induction", "previous_token", "patching", "first"}
    assert all(o["title"] == STATISTICS[o["value"]] for o in options)
