"""Site and node names: the one naming scheme of DESIGN.md, owned here.

A site is a named activation of the forward pass: `embed`, per layer `{l}.attn.{act_in,q,k,v,resid_delta}`
and `{l}.mlp.{act_in,post_act,resid_delta}`, then `final_resid`. A node is one channel of a site,
`site[index]`, e.g. `1.mlp.post_act[7]`. The residual stream at sublayer boundaries is a site too,
`{l}.attn.resid_in` / `{l}.mlp.resid_in` (the bridge locations), but it holds no nodes. The features of a
layer's transcoder, `{l}.mlp.transcoder[j]`, are nodes of a site that replaces the MLP: in forward order it
sits after `{l}.mlp.act_in` (what it reads) and before `{l}.mlp.post_act`. `{l}.attn.y` (the heads'
outputs side by side, before the output projection) can be captured but is no site of the catalog.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from .config import ModelConfig

# The node sites of every layer, in forward order (the paper's released code names them so).
LAYER_SITES = (
    "attn.act_in",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.resid_delta",
    "mlp.act_in",
    "mlp.post_act",
    "mlp.resid_delta",
)
RESID_KINDS = ("attn.resid_in", "mlp.resid_in")  # the residual stream entering each sublayer
FEATURE_KIND = "mlp.transcoder"
# Every site kind of a layer in forward order; the feature site only exists once a model has transcoders.
LAYER_FORWARD = (
    "attn.resid_in",
    *LAYER_SITES[:5],
    "mlp.resid_in",
    "mlp.act_in",
    FEATURE_KIND,
    *LAYER_SITES[6:],
)
NODE_RE = re.compile(r"^(embed|final_resid|(\d+)\.(attn|mlp)\.([a-z_]+))\[(\d+)\]$")


class Site(BaseModel):
    """One entry of a model's site catalog."""

    name: str = Field(description="e.g. `0.attn.q`")
    layer: int | None = Field(description="None for `embed` and `final_resid`")
    kind: str = Field(description="the name without its layer, e.g. `attn.q`, `embed`")
    dim: int = Field(description="channels at this site; nodes (where it holds them) are 0..dim-1")
    holds_nodes: bool = Field(description="false for the residual-stream locations `{l}.*.resid_in`")
    is_feature_site: bool = Field(False, description="transcoder features `{l}.mlp.transcoder`")


def node_name(site: str, index: int) -> str:
    return f"{site}[{index}]"


def parse_node(node: str) -> tuple[str, int]:
    m = NODE_RE.match(node)
    if not m:
        raise ValueError(f"{node!r} is not a node name like '0.mlp.post_act[12]'")
    return m.group(1), int(m.group(5))


def layer_site(layer: int, kind: str) -> str:
    """`layer_site(1, "attn.q")` -> `1.attn.q`."""
    return f"{layer}.{kind}"


def site_layer(site: str) -> int | None:
    head = site.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def site_kind(site: str) -> str:
    """The site without its layer: `1.attn.q` -> `attn.q`; `embed` -> `embed`."""
    return site if site_layer(site) is None else site.split(".", 1)[1]


def feature_site(layer: int) -> str:
    """Where a layer's transcoder features live: `{l}.mlp.transcoder`."""
    return layer_site(layer, FEATURE_KIND)


def is_feature_site(site: str) -> bool:
    return site_layer(site) is not None and site_kind(site) == FEATURE_KIND


def catalog(c: ModelConfig, feature_dim: int | None = None) -> list[Site]:
    """Every site of a model of this shape, in forward order; with `feature_dim` (the width of its
    transcoders) also the feature sites, each in its forward slot."""
    d = c.d_model
    out = [Site(name="embed", layer=None, kind="embed", dim=d, holds_nodes=True)]
    for i in range(c.n_layer):
        for kind in LAYER_FORWARD:
            if kind == FEATURE_KIND and feature_dim is None:
                continue
            dim = {"mlp.post_act": c.d_mlp, FEATURE_KIND: feature_dim}.get(kind, d)
            if kind in ("attn.q", "attn.k", "attn.v"):
                dim = c.d_attn
            out.append(
                Site(
                    name=layer_site(i, kind),
                    layer=i,
                    kind=kind,
                    dim=dim,
                    holds_nodes=kind not in RESID_KINDS,
                    is_feature_site=kind == FEATURE_KIND,
                )
            )
    out.append(Site(name="final_resid", layer=None, kind="final_resid", dim=d, holds_nodes=True))
    return out


def site_dims(c: ModelConfig) -> dict[str, int]:
    """Every node site of the model's own forward pass and its width, in forward order (not the residual
    stream locations of `resid_locations`, which hold no nodes)."""
    return {s.name: s.dim for s in catalog(c) if s.holds_nodes}


def layer_node_sites(c: ModelConfig) -> list[str]:
    """The 8 node sites of every layer, in forward order (without `embed` and `final_resid`)."""
    return [s.name for s in catalog(c) if s.holds_nodes and s.layer is not None]


def resid_locations(c: ModelConfig) -> list[str]:
    """The residual stream at sublayer boundaries, in forward order: the input of every attention and
    MLP sublayer, then the final residual. They are sites too (capture, edits, `start`), used by the
    bridges; `{l}.attn.resid_in` of layer 0 equals `embed`."""
    return [s.name for s in catalog(c) if s.kind in (*RESID_KINDS, "final_resid")]


def resid_location_after(c: ModelConfig, site: str) -> str:
    """The first residual-stream location at or after a site in forward order: where a change made at
    the site is read off (`final_resid` for itself)."""
    names = [s.name for s in catalog(c)]
    if site not in names:
        raise ValueError(f"unknown site {site!r}")
    locations = set(resid_locations(c))
    return next(n for n in names[names.index(site) :] if n in locations)
