"""ACT on a text-only model: the zoo's toy-gpt on IOI (Yu et al. apply ACT to LLMs on classification tasks).

The head search scores the mean IOI logit difference (indirect object minus subject) on calibration
prompts; the chosen Plan is then measured on separate held-out prompts (other seed, held-out name pairs,
half of them in templates never trained on). Prompts run one at a time, as in ACT's evaluation.
"""

from __future__ import annotations

import torch

from attnlab.hooks import attach

from .act import ACTMethod, act_search


def ioi_logit_diffs_with(model, tok, prompts, plan=None, key_set_fn_factory=None) -> torch.Tensor:
    """IOI logit differences ``(len(prompts),)`` with an optional ACT plan (fresh sink sets per prompt)."""
    out = []
    for p in prompts:
        enc = tok([p.text], return_tensors="pt")
        fn = key_set_fn_factory() if key_set_fn_factory is not None else None
        with torch.no_grad(), attach(model, plan=plan, tokenizer=tok, key_set_fn=fn) if plan is not None else torch.no_grad():
            logits = model(**enc).logits[0, -1]  # (V,)
        io, s = tok.convert_tokens_to_ids([p.io, p.s])
        out.append(logits[io] - logits[s])
    return torch.stack(out)


def act_on_ioi(model, tok, *, n_calibration: int = 48, n_test: int = 96, beta: float = 0.4,
               calibration_seed: int = 101, test_seed: int = 202, rule: str = "act_relative") -> dict:
    """Search ACT heads on calibration IOI prompts and report baseline vs ACT on held-out prompts.

    ``rule`` is the sink cutoff (:func:`attnlab.interventions.act.hidden_sinks`; ``"act"``: the released code's).

    Returns:
        ``{"heads", "search", "baseline": {...}, "act": {...}}`` with accuracy (logit diff > 0) and mean logit diff.
    """
    from attnlab.zoo.toy_gpt import heldout_ioi_prompts

    calib = heldout_ioi_prompts(n_calibration, seed=calibration_seed)
    test = heldout_ioi_prompts(n_test, seed=test_seed)
    cfg = model.config

    def score(plan, key_set_fn):
        factory = key_set_fn.fresh if key_set_fn is not None else None
        return ioi_logit_diffs_with(model, tok, calib, plan, factory).mean().item()

    method: ACTMethod = act_search(score, cfg.n_layer, cfg.n_head, beta=beta, rule=rule)

    def summary(plan):
        factory = (lambda: method.steering_for()["key_set_fn"]) if plan is not None else None
        diffs = ioi_logit_diffs_with(model, tok, test, plan, factory)
        return {"accuracy": (diffs > 0).float().mean().item(), "mean_logit_diff": diffs.mean().item()}

    return {"heads": [f"{l}.{h}" for l, h in method.heads], "search": method.search,
            "baseline": summary(None), "act": summary(method.plan if method.heads else None)}
