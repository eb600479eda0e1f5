"""Every component id of the dashboard, in one place (pages import these; no string ids elsewhere).

Names are ``<PAGE>_<WHAT>``; the values are what the browser tests select on.
"""

# -- app shell (present on every page) ---------------------------------------------------------------
NAV = "nav-location"  # dcc.Location used by callbacks to navigate (e.g. Heads -> Attention)
RUN = "run-select"
TRACE = "trace-select"
ITEM = "item-select"
RUN_HINT = "run-hint"
PAGE_LINKS = "page-links"

# -- Runs -----------------------------------------------------------------------------------------
RUNS_TABLE = "runs-table"
RUNS_DETAIL = "runs-detail"
RUNS_TIMINGS = "runs-timings"
RUNS_MESSAGE = "runs-message"
RUNS_TRACES_TABLE = "runs-traces-table"  # DataTable: the selected Run's traces

# -- Heads ----------------------------------------------------------------------------------------
HEADS_STAT = "heads-stat"
HEADS_GRID = "heads-grid"
HEADS_OPEN = "heads-open"
HEADS_OPEN_BUTTON = "heads-open-button"
HEADS_MESSAGE = "heads-message"
HEADS_URL = "heads-url"
HEADS_BODY = "heads-body"
HEADS_WANTED = "heads-wanted"
HEADS_CONTROLS = "heads-controls"  # the control bar, hidden with the body
HEADS_STAT_HELP = "heads-stat-help"  # the "?" of the chosen statistic

# -- Attention ------------------------------------------------------------------------------------
ATTN_LAYER = "attn-layer"
ATTN_HEAD = "attn-head"
ATTN_HEATMAP = "attn-heatmap"
ATTN_TEXT = "attn-text"
ATTN_FOCUS = "attn-focus"  # dcc.Dropdown: the focused token position (set by clicks too)
ATTN_WANTED = "attn-wanted"  # dcc.Store: the view the URL asked for (the focus token, kept until its options exist)
ATTN_QUERY = "attn-query"  # query token for the image overlay
ATTN_IMAGE = "attn-image"
ATTN_IMAGE_BOX = "attn-image-box"
ATTN_MESSAGE = "attn-message"
ATTN_SCALE = "attn-scale"  # colour scale of the heatmap
ATTN_SINK = "attn-sink"  # checklist: hide the first token's column
ATTN_BODY = "attn-body"  # the views, hidden when the Run cannot fill them
ATTN_CONTROLS = "attn-controls"  # the control bar, hidden with the body
ATTN_URL = "attn-url"  # dcc.Store written by the URL sync
ATTN_DATA_BUTTON = "attn-data-button"  # "download the matrix (.npy)"
ATTN_DATA = "attn-data"  # dcc.Download of the head's attention matrix
# dcc.Store: the view the heatmap shows (run, trace, item, layer, head, sink, scale), set in the browser
ATTN_DRAWN = "attn-drawn"
ATTN_MINIMAP = "attn-minimap"  # the overview of a long input's whole pattern; a click zooms the heatmap
ATTN_MINIMAP_BOX = "attn-minimap-box"  # the minimap and its title, hidden up to LONG_INPUT tokens
ATTN_MINIMAP_SHAPE = "attn-minimap-shape"  # dcc.Store: [Q, K] of the matrix the heatmap and minimap draw

# -- Flow -----------------------------------------------------------------------------------------
FLOW_METHOD = "flow-method"
FLOW_FUSION = "flow-fusion"
FLOW_DISCARD = "flow-discard"
FLOW_OPTIONS = "flow-options"
FLOW_POSITION = "flow-position"
FLOW_BAR = "flow-bar"
FLOW_GRID = "flow-grid"
FLOW_GRID_BOX = "flow-grid-box"
FLOW_MESSAGE = "flow-message"
FLOW_BODY = "flow-body"
FLOW_CONTROLS = "flow-controls"
FLOW_URL = "flow-url"
FLOW_WANTED = "flow-wanted"  # dcc.Store: dropdown values the URL asked for (a Dropdown drops values before its options)

# -- Sinks & registers ----------------------------------------------------------------------------
SINKS_RULE = "sinks-rule"
SINKS_HEATMAP = "sinks-heatmap"
SINKS_TABLE = "sinks-table"
SINKS_MASSIVE = "sinks-massive"
SINKS_LAYER = "sinks-layer"
SINKS_COMPARE = "sinks-compare"
SINKS_NORMS = "sinks-norms"
SINKS_NORMS_OTHER = "sinks-norms-other"
SINKS_SUMMARY = "sinks-summary"
SINKS_NORMS_BOX = "sinks-norms-box"
SINKS_MESSAGE = "sinks-message"
SINKS_BODY = "sinks-body"
SINKS_CONTROLS = "sinks-controls"
SINKS_MASSIVE_BOX = "sinks-massive-box"  # the massive-activation plot, hidden without layer outputs
SINKS_NORMS_SECTION = "sinks-norms-section"
SINKS_NORMS_NOTE = "sinks-norms-note"
SINKS_URL = "sinks-url"
SINKS_WANTED = "sinks-wanted"

# -- QK embedding ---------------------------------------------------------------------------------
QK_LAYER = "qk-layer"
QK_HEAD = "qk-head"
QK_COLOUR = "qk-colour"
QK_METHOD = "qk-method"
QK_GRID = "qk-grid"
QK_DETAIL = "qk-detail"
QK_TOKEN = "qk-token"
QK_MESSAGE = "qk-message"
QK_URL = "qk-url"
QK_BODY = "qk-body"
QK_CONTROLS = "qk-controls"

# -- Circuits -------------------------------------------------------------------------------------
CIRCUITS_MIN = "circuits-min-strength"
CIRCUITS_GRAPH = "circuits-graph"
CIRCUITS_PATCHING = "circuits-patching"
CIRCUITS_MESSAGE = "circuits-message"
CIRCUITS_READOUT = "circuits-readout"
CIRCUITS_PATCHING_BOX = "circuits-patching-box"
CIRCUITS_URL = "circuits-url"
CIRCUITS_BODY = "circuits-body"
CIRCUITS_CONTROLS = "circuits-controls"

# -- Interventions & evals ------------------------------------------------------------------------
IV_BASELINE = "iv-baseline"
IV_METHOD = "iv-method"
IV_LAYER = "iv-layer"
IV_HEAD = "iv-head"
IV_MAPS = "iv-maps"
IV_ANSWERS = "iv-answers"
IV_ANSWERS_TABLE = "iv-answers-table"
IV_EVAL = "iv-eval"
IV_METRIC = "iv-metric"
IV_EVAL_CHART = "iv-eval-chart"
IV_EVAL_TABLE = "iv-eval-table"
IV_PLANS_TABLE = "iv-plans-table"
IV_MESSAGE = "iv-message"
IV_URL = "iv-url"
IV_WANTED = "iv-wanted"
