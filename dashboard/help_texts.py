"""Every help popover of the dashboard, in one place: what a control or statistic is and how to read it, in one or
two sentences, citing the paper (author, year, section) where the view follows one.

``CONTROLS`` is keyed by the control's component id (:mod:`attnlab.dashboard.ids`), so a page attaches its text
with ``control(label, component, help=CONTROLS[component_id])``; ``STATISTICS`` by the Heads page's statistic
(:data:`attnlab.dashboard.summaries.STAT_LABELS`); ``VIEWS`` by a figure or table that is not a control.
"""

from __future__ import annotations

from attnlab.viz.attention import LONG_INPUT

from . import ids

#: per-head statistic -> what it is and how to read it (the Heads page's "?" shows the chosen one).
STATISTICS = {
    "entropy": "Entropy of each query row's attention in nats, averaged over the item's rows: 0 is all weight on one "
               "token, log N uniform over N keys. Low marks a focused head, high a broad one (Clark et al. 2019).",
    "max": "The largest weight in each query row, averaged over rows: near 1 the head puts almost all its attention "
           "on one token (often a sink or the previous token); near 1/N it spreads it evenly.",
    "first": "Share of each query's attention on the first real token, averaged over queries. High values are "
             "attention sinks: a place to park attention that changes little (Xiao et al. 2024).",
    "special": "Share of each query's attention on special tokens ([CLS], [SEP], <s>, ...). Many heads put most "
               "weight on [SEP] when they have nothing to do, a near no-op (Clark et al. 2019).",
    "image": "Share of the text tokens' attention that lands on image tokens (every row's when there is no text "
             "prompt). Most LVLM heads give the image little attention past the early layers (Chen et al. 2024, "
             "FastV); heads with a high share are the ones that read the picture.",
    "sinks": "Attention mass on the tokens the sink rule flags (Xiao et al. 2024), averaged over queries; the "
             "Sinks page lists which tokens they are.",
    "vhd": "VHD (He et al. 2025, Eq. 4): how far a head's output moves when the image is removed, i.e. how much the "
           "head relies on vision; higher is more vision-aware.",
    "patching": "Patching effect (Wang et al. 2022): the logit difference when this head's output is patched from "
                "the clean into the corrupted prompt, as a share of clean minus corrupted; 0 is as corrupted, 1 as "
                "clean, negative works against the task.",
    "induction": "Induction score (Olsson et al. 2022): on a repeated random block, the mean attention from each "
                 "token of the second copy to the token after its earlier occurrence. Near 1, the head completes "
                 "[A][B] … [A] → [B].",
    "previous_token": "Previous-token score: the mean attention from each token to the one just before it. Near 1, a "
                      "previous-token head, the first half of an induction circuit (Olsson et al. 2022).",
}

#: figures and tables that are not controls -> their "?".
VIEWS = {
    "massive": "Massive activations (Sun et al. 2024): a few hidden dimensions whose values at a few tokens (often "
               "the first token and delimiters) are about 1000x the layer's median. Lines: the largest |h| of each "
               "layer's output beside the median, on a log axis; a sudden gap of orders of magnitude marks them.",
    "registers": "Output norm of each patch token on the image grid (Darcet et al. 2024): large ViTs turn a few "
                 "low-information background patches into high-norm tokens holding global information. Isolated "
                 "bright patches are those artifacts; a model with register tokens should show none.",
    "pope": "POPE (Li et al. 2023): yes/no questions \"Is there a <object> in the image?\" over present and absent "
            "objects (random, popular, adversarial splits). Accuracy and F1: higher is better; the yes ratio should "
            "sit near 0.5, and above it the model over-answers yes, i.e. hallucinates objects.",
    "chair": "CHAIR (Rohrbach et al. 2018): in free captions, CHAIR_i is the share of mentioned objects absent "
             "from the image and CHAIR_s the share of captions with at least one; lower is better, read beside recall "
             "(the share of present objects mentioned) so that short captions do not win by saying little.",
    "patching": "Patching effect: (patched − corrupted) / (clean − corrupted) of the logit difference when one head's "
                "output is patched between the clean and corrupted prompts (Wang et al. 2022): 0 is as "
                "corrupted, 1 as clean; click a head to open it.",
    "minimap": f"The whole pattern of an input over {LONG_INPUT} tokens, each block coloured by its largest weight "
               "(so a single strong weight stays visible) on the heatmap's per-head max scale; the red box is the "
               "window the heatmap shows. Click a place to zoom the heatmap to the tokens around it.",
    "statistic": "What colours the grid: one number per head for this item. The \"?\" describes the statistic chosen.",
}

#: control id -> its "?".
CONTROLS = {
    # Attention
    ids.ATTN_LAYER: "The transformer block whose attention is shown (0 is nearest the input); only captured layers "
                    "are offered, and the heatmap shows one head of it.",
    ids.ATTN_HEAD: "One attention head of the layer: each heatmap row is a query token's softmax weights over the keys "
                   "(rows sum to 1). Heads of a layer specialise, e.g. previous-token or delimiter heads "
                   "(Clark et al. 2019).",
    ids.ATTN_SCALE: f"auto: fixed 0-1 up to {LONG_INPUT} tokens, per-head max above (a long input's mean weight is "
                    "1/N, so a fixed scale is uniformly dark). Per-head max and the 99th percentile stretch one "
                    "head's weights over the colour bar; log shows weights from 1e-4 up.",
    ids.ATTN_SINK: "Hide the first real token's column: attention sinks (Xiao et al. 2024) put most of the weight "
                   "there, and that one column sets the colour range for all the rest.",
    ids.ATTN_FOCUS: "The token the text view focuses: its row (what it attends to) and column (what attends to it) "
                    "colour the tokens. Click a token there or a heatmap row, or choose it here (keyboard: Tab here, "
                    "type to search, Enter).",
    ids.ATTN_QUERY: "The text token whose attention row is painted over the image patches: brighter patches receive "
                    "more of its weight (the row sums to 1 over all keys, text included).",
    # Heads
    ids.HEADS_STAT: VIEWS["statistic"],
    ids.HEADS_OPEN: "A head to open on the Attention page (layer.head), for the keyboard; clicking a grid cell does "
                    "the same.",
    # Flow
    ids.FLOW_METHOD: "Rollout multiplies the layers' attention (with the residual) down the stack; flow takes the "
                     "maximum flow through the attention graph (Abnar & Zuidema 2020).",
    ids.FLOW_FUSION: "How a layer's heads become one attention matrix before rollout or flow: mean, as in rollout's "
                     "definition (Abnar & Zuidema 2020); max keeps each edge's strongest head, min its weakest.",
    ids.FLOW_DISCARD: "Rollout only: the share of each layer's weakest attention weights set to 0 before multiplying, "
                      "which removes diffuse background and sharpens the map; 0 is rollout as defined "
                      "(Abnar & Zuidema 2020).",
    ids.FLOW_OPTIONS: "On a causal model early tokens are seen by every later row, so rollout and flow favour them; "
                      "the paper suggests normalising by the receptive field (Abnar & Zuidema 2020, conclusion). "
                      "Here relevance is divided by what uniform attention over each query's visible keys gives, "
                      "then renormalised.",
    ids.FLOW_POSITION: "The output traced back to the inputs: a causal model predicts at its last real token, an "
                       "encoder summarises at [CLS] (the first); \"mean of all tokens\" explains a mean-pooled "
                       "embedding. Each bar is an input token's share of relevance (Abnar & Zuidema 2020).",
    # Sinks & registers
    ids.SINKS_RULE: "A key is a sink when its column mean over the rows that can see it is large. ACT (Yu et al. "
                    "2024): above 0.1, the released code's absolute cut-off, which flags every token of a short "
                    "input. Relative: above 5/N, five times the uniform weight 1/N. The default asks for both, so it "
                    "means the same at every length.",
    ids.SINKS_LAYER: "The layer whose output-token norms paint the patch grid. High-norm artifact patches appear from "
                     "the middle layers of large ViTs on (Darcet et al. 2024); slide to see where they start.",
    ids.SINKS_COMPARE: "A second vision Run drawn beside this one, by default the same model with (or without) "
                       "registers: extra register tokens take over the artifacts' role, so its patch grid should "
                       "show no high-norm outliers (Darcet et al. 2024).",
    # QK embedding
    ids.QK_LAYER: "The layer whose queries and keys are embedded; only layers captured with q and k are offered. The "
                  "small multiples below show every head of it (AttentionViz, Yeh et al. 2023).",
    ids.QK_HEAD: "The head drawn large (or click a small multiple). A query (circle) near a key (diamond) means a "
                 "large attention logit between them (Yeh et al. 2023).",
    ids.QK_COLOUR: "Colour the points by query or key, by token position (positional heads form ordered bands), or by "
                   "token type (text, image, special), the encodings AttentionViz reads heads by (Yeh et al. 2023).",
    ids.QK_METHOD: "How faithful the picture is: queries and keys share one space where distance tracks the attention "
                   "logit q·k (Yeh et al. 2023: keys are translated and scaled, which leaves every softmax unchanged), "
                   "then are projected to 2-D, which keeps only part of that geometry. PCA is linear and stable; "
                   "t-SNE and UMAP keep neighbourhoods, not distances. Each panel's ρ is the Spearman correlation of "
                   "distance in that picture with the logit: clearly negative, the picture shows the head's "
                   "attention; near 0 or positive, it does not. The head's title adds how often the nearest key is "
                   "the most attended one. Click a point: the bar chart shows the true weights.",
    # Circuits
    ids.CIRCUITS_MIN: "Edge strength: the upstream head's mean share of all upstream heads' absolute contributions to "
                      "the signal the downstream head reads, over its firings (Franco & Crovella 2024, sparse "
                      "attention decomposition). Embeddings and MLPs are not in that denominator: the edge table's "
                      "share_of_all is the share among every writer. Blue: written at the key token; orange: at the "
                      "query token.",
    # Interventions & evals
    ids.IV_BASELINE: "The Run without an intervention Plan, drawn on the left: the model's own attention on these "
                     "inputs.",
    ids.IV_METHOD: "A Run of the same model on the same tokens under a Plan (e.g. ACT, Yu et al. 2024; VAR, Kang et "
                   "al. 2025; VHR, He et al. 2025), drawn on the right: the difference is what the Plan changed.",
    ids.IV_LAYER: "The layer compared in both Runs; a Plan acts on some layers only, and the others stay equal "
                  "(a note says so).",
    ids.IV_HEAD: "The head compared in both Runs: each map row is a query token's attention over the keys.",
    ids.IV_EVAL: "An eval Run (`attnlab eval compare`): every method, the baseline included, scored on the same POPE "
                 "questions and CHAIR captions, so the rows compare directly.",
    ids.IV_METRIC: "The column the bar chart draws, one bar per method and split: POPE accuracy, precision, recall, "
                   "F1 and yes ratio (Li et al. 2023); CHAIR_s and CHAIR_i, lower is better (Rohrbach et al. "
                   "2018).",
}


def statistic_help(stat: str | None) -> str:
    """The "?" of the Heads page's statistic selector: the chosen statistic's text, else the selector's own."""
    return STATISTICS.get(stat, CONTROLS[ids.HEADS_STAT]) if stat else CONTROLS[ids.HEADS_STAT]
