"""Colours and margins every attnlab figure shares, so two figures can be compared by eye.

Queries are green and keys pink (AttentionViz's convention, Yeh et al. 2023); token segments keep one colour
each across the dashboard, the notebooks and the CLI's HTML.
"""

from __future__ import annotations

QUERY_COLOUR = "#1b9e77"
KEY_COLOUR = "#e7298a"
#: query/key -> colour.
QK_COLOURS = {"query": QUERY_COLOUR, "key": KEY_COLOUR}
#: token segment kind -> colour (``""``: a token outside every segment).
SEGMENT_COLOURS = {"text": "#1f77b4", "image": "#ff7f0e", "special": "#7f7f7f", "system": "#9467bd",
                   "register": "#d62728", "pad": "#c7c7c7", "": "#17becf"}
#: default plot margins (pixels).
MARGIN = {"l": 60, "r": 20, "t": 50, "b": 50}
