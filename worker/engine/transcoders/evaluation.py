"""Validation figures of a sweep and the transcoder-vs-SAE comparison at matched sparsity.

Fidelity is the model's next-token CE on validation tokens with one layer's MLP replaced; L0 is the mean
number of active latents per token. `matched_comparison` compares the two kinds at matched L0 by
interpolating the SAE's CE linearly in log L0 at each transcoder's L0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..model import SparseGPT
from ..search import ProgressFn
from .coders import KINDS, SparseCoder
from .replacement import ReplaceFn, Replacement, coder_fn, mlp_io
from .results import LayerReference, Matched, MatchedRow, MatchedSetting, Reference, SweepPoint


@torch.no_grad()
def evaluate_coders(
    model: SparseGPT,
    coders: dict[str, list[list[SparseCoder]]],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    means: list[torch.Tensor],
    l1: list[float],
    on_progress: ProgressFn | None = None,
) -> dict:
    """Validation figures: clean CE, CE with each layer's MLP zero- and mean-ablated, and per coder its
    L0, FVU, dead fraction and the CE with its layer's MLP replaced. Same batches for every variant."""
    report = on_progress or (lambda f, m: None)
    L = model.cfg.n_layer
    variants: dict[tuple, ReplaceFn] = {}
    for layer in range(L):
        variants[("zero", layer)] = lambda x, y: torch.zeros_like(y)
        variants[("mean", layer)] = lambda x, y, m=means[layer]: m.expand_as(y)
    for kind, per_l1 in coders.items():
        for i, per_layer in enumerate(per_l1):
            for layer, c in enumerate(per_layer):
                variants[(kind, i, layer)] = coder_fn(kind, c)
    ce: dict = {key: [] for key in variants} | {"clean": []}  # per batch: mean CE over its tokens
    n_tok = 0
    stats = {k: {"active": 0.0, "sse": 0.0, "fired": None} for k in variants if k[0] in KINDS}
    y_sum = [0.0] * L
    y_sq = [0.0] * L
    y_mean_sum = [torch.zeros(model.cfg.d_model) for _ in range(L)]
    for b, (x, y) in enumerate(batches):
        logits, _ = model(x)
        ce["clean"].append(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
        io = mlp_io(model, x)
        for layer, (_, out) in enumerate(io):
            flat = out.flatten(0, 1)
            y_sq[layer] += float(flat.pow(2).sum())
            y_mean_sum[layer] += flat.sum(0)
            y_sum[layer] += flat.shape[0]
        for key, fn in variants.items():
            layer = key[-1]
            logits, _ = Replacement(model, {layer: fn})(x)
            ce[key].append(F.cross_entropy(logits.flatten(0, 1), y.flatten()).item())
            if key in stats:
                kind, i, _ = key
                c = coders[kind][i][layer]
                inp, out = io[layer]
                z = c.encode(inp if kind == "transcoder" else out)
                st = stats[key]
                st["active"] += float((z > 0).sum())
                st["sse"] += float((c.decode(z) - out).pow(2).sum())
                fired = (z > 0).flatten(0, 1).any(0)
                st["fired"] = fired if st["fired"] is None else st["fired"] | fired
        n_tok += y.numel()
        report((b + 1) / len(batches), f"evaluated {b + 1}/{len(batches)} validation batches")
    # Total variance of the MLP output about its mean: FVU = SSE / that.
    var = [y_sq[i] - float(y_mean_sum[i].pow(2).sum()) / y_sum[i] for i in range(L)]

    def mean(values: list[float]) -> float:  # batches are equally long: the mean over all tokens
        return sum(values) / len(values)

    reference = Reference(
        clean_ce=mean(ce["clean"]),
        clean_ce_batches=ce["clean"],
        layers=[
            LayerReference(
                layer=i, zero_ablated_ce=mean(ce[("zero", i)]), mean_ablated_ce=mean(ce[("mean", i)])
            )
            for i in range(L)
        ],
    )
    points = []
    for key, st in stats.items():
        kind, i, layer = key
        point = SweepPoint(
            kind=kind,
            l1=l1[i],
            l1_index=i,
            layer=layer,
            l0=st["active"] / n_tok,
            ce=mean(ce[key]),
            ce_batches=ce[key],
            fvu=st["sse"] / max(var[layer], 1e-30),
            dead_fraction=float((~st["fired"]).float().mean()),
        )
        points.append(point.model_dump())
    return {"reference": reference.model_dump(), "points": points, "tokens": n_tok}


def _segment(xs: list[float], x: float) -> tuple[int, float, bool]:
    """Linear interpolation through sorted xs: y(x) = (1 - t) y_k + t y_(k+1) on the segment holding x,
    outside their range the nearest segment's line. -> (k, t, extrapolated). One point: (0, 0, x != it)."""
    if len(xs) == 1:
        return 0, 0.0, x != xs[0]
    k = 0
    while k < len(xs) - 2 and x > xs[k + 1]:
        k += 1
    t = 0.0 if xs[k + 1] == xs[k] else (x - xs[k]) / (xs[k + 1] - xs[k])
    return k, t, not xs[0] <= x <= xs[-1]


def _at(ys: list[float], k: int, t: float) -> float:
    return ys[k] if len(ys) == 1 else (1 - t) * ys[k] + t * ys[k + 1]


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (None from one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def matched_comparison(points: list[dict]) -> dict:
    """Transcoder vs SAE at matched L0: for each transcoder (setting i, layer l), the SAE's CE of that
    layer interpolated linearly in log L0 at the transcoder's L0; delta = SAE CE - transcoder CE. Its
    standard error comes from the per-batch deltas (same validation batches for every variant, the
    interpolation weights fixed by the L0s over all batches). Per setting, the verdict is on the mean
    over layers of delta >= 0; per layer it is listed too."""
    rows = []
    for layer in sorted({p["layer"] for p in points}):
        sae = sorted(
            (p for p in points if p["kind"] == "sae" and p["layer"] == layer and p["l0"] > 0),
            key=lambda p: p["l0"],
        )
        xs = [math.log(p["l0"]) for p in sae]
        for p in points:
            if p["kind"] != "transcoder" or p["layer"] != layer:
                continue
            row = {"layer": layer, "l1": p["l1"], "l1_index": p["l1_index"], "l0": p["l0"]}
            row |= {"transcoder_ce": p["ce"], "sae_ce": None, "extrapolated": None, "delta": None}
            row |= {"delta_se": None, "delta_batches": None}
            if sae and p["l0"] > 0:
                k, t, extrapolated = _segment(xs, math.log(p["l0"]))
                sae_ce = _at([q["ce"] for q in sae], k, t)
                row |= {"sae_ce": sae_ce, "extrapolated": extrapolated, "delta": sae_ce - p["ce"]}
                if all("ce_batches" in q for q in [p, *sae]):
                    per_batch = [
                        _at([q["ce_batches"][b] for q in sae], k, t) - p["ce_batches"][b]
                        for b in range(len(p["ce_batches"]))
                    ]
                    row |= {"delta_batches": per_batch, "delta_se": _mean_se(per_batch)[1]}
            rows.append(MatchedRow(**row).model_dump())
    settings = []
    for i in sorted({r["l1_index"] for r in rows}):
        mine = [r for r in rows if r["l1_index"] == i and r["delta"] is not None]
        if not mine:
            continue
        mean_delta = sum(r["delta"] for r in mine) / len(mine)
        se = None
        if all(r["delta_batches"] for r in mine):
            per_batch = [sum(b) / len(mine) for b in zip(*(r["delta_batches"] for r in mine), strict=True)]
            se = _mean_se(per_batch)[1]
        setting = MatchedSetting(
            l1_index=i,
            l1=mine[0]["l1"],
            mean_l0=sum(r["l0"] for r in mine) / len(mine),
            mean_delta=mean_delta,
            mean_delta_se=se,
            transcoder_better=mean_delta >= 0,
            layers_better=sum(r["delta"] >= 0 for r in mine),
            layers=len(mine),
            extrapolated=any(r["extrapolated"] for r in mine),
        )
        settings.append(setting.model_dump())
    better = sum(s["transcoder_better"] for s in settings)
    return Matched(rows=rows, settings=settings, transcoder_better_settings=better).model_dump()


def sweep_table(sweep: dict) -> list[str]:
    """The sweep as text lines (the CLI prints them)."""
    ref = sweep["reference"]
    lines = [f"clean CE {ref['clean_ce']:.4f}"]
    for r in ref["layers"]:
        zero, mean = r["zero_ablated_ce"], r["mean_ablated_ce"]
        lines.append(f"layer {r['layer']}: CE with the MLP zero-ablated {zero:.4f}, mean-ablated {mean:.4f}")
    lines.append(f"{'kind':11s} {'l1':>8s} {'layer':>5s} {'L0':>8s} {'CE':>8s} {'FVU':>7s} {'dead':>6s}")
    for p in sorted(sweep["points"], key=lambda p: (p["layer"], p["kind"], p["l1"])):
        lines.append(
            f"{p['kind']:11s} {p['l1']:8.2g} {p['layer']:5d} {p['l0']:8.2f} {p['ce']:8.4f} {p['fvu']:7.4f} "
            f"{p['dead_fraction']:6.3f}"
        )
    matched = sweep.get("matched")
    if not matched or not matched["rows"]:
        return lines
    lines.append(
        "matched L0: SAE CE interpolated linearly in log L0 at the transcoder's L0 (* = extrapolated, "
        "± = standard error over validation batches)"
    )
    lines.append(f"{'l1':>8s} {'layer':>5s} {'L0':>8s} {'transcoder':>10s} {'SAE':>8s} {'SAE-TC':>8s}")
    for r in matched["rows"]:
        if r["sae_ce"] is None:
            continue
        star = "*" if r["extrapolated"] else " "
        se = f" ± {r['delta_se']:.4f}" if r.get("delta_se") is not None else ""
        lines.append(
            f"{r['l1']:8.2g} {r['layer']:5d} {r['l0']:8.2f} {r['transcoder_ce']:10.4f} "
            f"{r['sae_ce']:8.4f}{star}{r['delta']:8.4f}{se}"
        )
    for st in matched["settings"]:
        winner = "transcoder" if st["transcoder_better"] else "SAE"
        se = f" ± {st['mean_delta_se']:.4f}" if st.get("mean_delta_se") is not None else ""
        lines.append(
            f"setting l1={st['l1']:.2g} (mean L0 {st['mean_l0']:.1f}): mean SAE-TC "
            f"{st['mean_delta']:+.4f}{se}, {winner} better; "
            f"transcoder better on {st['layers_better']}/{st['layers']} layers"
        )
    n = len(matched["settings"])
    lines.append(
        f"transcoder CE <= SAE CE at matched L0 at {matched['transcoder_better_settings']} of {n} settings"
    )
    return lines
