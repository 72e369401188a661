"""The one owner of site and node names (worker/engine/sites.py): parsing, layers, forward order, which
sites hold nodes, the residual-stream locations and the transcoder feature sites in their slot."""

import pytest

from worker.engine.config import preset
from worker.engine.sites import (
    LAYER_SITES,
    catalog,
    feature_site,
    is_feature_site,
    layer_node_sites,
    node_name,
    parse_node,
    resid_location_after,
    resid_locations,
    site_dims,
    site_kind,
    site_layer,
)

CFG = preset("test").model  # d_model 64, 2 layers, d_mlp 256


def test_names_parse_and_format():
    assert parse_node(node_name("1.mlp.transcoder", 9)) == ("1.mlp.transcoder", 9)
    assert parse_node("final_resid[0]") == ("final_resid", 0)
    for bad in ("1.mlp.post_act", "mlp.post_act[1]", "1.mlp.post_act[-1]", "x[1]"):
        with pytest.raises(ValueError, match="not a node name"):
            parse_node(bad)
    assert [site_layer(s) for s in ("embed", "12.attn.q", "final_resid")] == [None, 12, None]
    assert [site_kind(s) for s in ("embed", "12.attn.q", "0.mlp.transcoder")] == [
        "embed",
        "attn.q",
        "mlp.transcoder",
    ]
    assert feature_site(3) == "3.mlp.transcoder" and is_feature_site("3.mlp.transcoder")
    assert not is_feature_site("3.mlp.post_act") and not is_feature_site("embed")


def test_catalog_is_the_forward_order():
    sites = catalog(CFG)
    names = [s.name for s in sites]
    assert names[0] == "embed" and names[-1] == "final_resid"
    assert names[1:11] == [
        "0.attn.resid_in",
        *(f"0.{k}" for k in LAYER_SITES[:5]),
        "0.mlp.resid_in",
        *(f"0.{k}" for k in LAYER_SITES[5:]),
    ]
    assert [s.name for s in sites if not s.holds_nodes] == resid_locations(CFG)[:-1]
    assert site_dims(CFG) == {s.name: s.dim for s in sites if s.holds_nodes}
    assert site_dims(CFG)["1.mlp.post_act"] == 256 and site_dims(CFG)["1.attn.q"] == 64
    assert layer_node_sites(CFG) == [f"{i}.{k}" for i in range(2) for k in LAYER_SITES]
    assert not any(s.is_feature_site for s in sites)


def test_feature_sites_sit_between_the_mlp_input_and_its_neurons():
    sites = catalog(CFG, feature_dim=512)
    names = [s.name for s in sites]
    for layer in range(2):
        i = names.index(feature_site(layer))
        assert names[i - 1] == f"{layer}.mlp.act_in" and names[i + 1] == f"{layer}.mlp.post_act"
        assert sites[i].dim == 512 and sites[i].holds_nodes and sites[i].layer == layer
    assert [s.name for s in sites if s.is_feature_site] == ["0.mlp.transcoder", "1.mlp.transcoder"]


def test_the_residual_location_after_a_site():
    assert resid_location_after(CFG, "embed") == "0.attn.resid_in"
    assert resid_location_after(CFG, "0.attn.v") == "0.mlp.resid_in"
    assert resid_location_after(CFG, "0.mlp.post_act") == "1.attn.resid_in"
    assert resid_location_after(CFG, "1.mlp.resid_delta") == "final_resid"
    assert resid_location_after(CFG, "final_resid") == "final_resid"
    with pytest.raises(ValueError, match="unknown site"):
        resid_location_after(CFG, "5.attn.q")
