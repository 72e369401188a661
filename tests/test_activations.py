import math

import pytest
import torch
from pydantic import ValidationError

from worker.engine import checkpoints as ck
from worker.engine.ablation import compute_means
from worker.engine.activations import (
    BIN_FRACTIONS,
    QUANTILE_LEVELS,
    ProfileConfig,
    corpus_windows,
    profile_folder,
)
from worker.engine.data import EOT, load_corpus

# Small enough to be quick; `exact` below the 1 % bin's rank, so exact, partial and sampled bins all occur.
CFG = ProfileConfig(tokens=64 * 64, batch_tokens=1024, context=4, examples=5, sample_positions=1024, exact=8)


@pytest.fixture(scope="module")
def profiled(test_model):
    model, tok, _ = ck.load_model(test_model)
    progress = []
    profile = profile_folder(test_model, CFG, lambda f, m: progress.append((f, m)))
    with torch.no_grad():
        _, acts = model(profile.windows.tokens, capture=list(profile.sites))
    return model, tok, profile, acts, progress


def test_windows_remember_documents_and_offsets(test_model):
    _, tok, run = ck.load_model(test_model)
    docs = load_corpus(run.train.corpus, 200_000)
    w = corpus_windows(tok, docs, n_windows=6, n_ctx=32, seed=1)
    assert w.tokens.shape == w.doc.shape == w.start.shape == (6, 32)
    eot = tok.token_to_id(EOT)
    checked = 0
    for win in range(6):
        for pos in range(32):
            token, doc = int(w.tokens[win, pos]), w.docs[int(w.doc[win, pos])]
            start, end = int(w.start[win, pos]), int(w.end[win, pos])
            if token == eot:
                assert start == end == len(doc.text)
                continue
            text = tok.decode([token])
            if "\ufffd" not in text:  # part of a multi-byte character decodes to a replacement char
                assert doc.text[start:end] == text
                checked += 1
    assert checked > 100
    # windows are consecutive pieces of one stream: no position is profiled twice
    flat_doc, flat_start = w.doc.flatten(), w.start.flatten()
    order = flat_doc * 10**9 + flat_start
    assert (order[1:] >= order[:-1]).all()


def test_means_frequencies_and_quantiles_match_a_direct_computation(profiled):
    model, _, profile, acts, progress = profiled
    tokens = profile.windows.tokens
    assert profile.n_tokens == tokens.numel() == 4096
    direct = compute_means(model, [(tokens[i : i + 16], None) for i in range(0, len(tokens), 16)])
    assert set(profile.means) == set(model.site_dims())
    for site, sp in profile.sites.items():
        a = acts[site].reshape(-1, acts[site].shape[-1])
        D = a.shape[1]
        torch.testing.assert_close(profile.means[site], direct[site], rtol=1e-5, atol=1e-6)
        assert torch.equal(sp.frequency, (a != 0).double().mean(0).float())
        assert sp.quantiles.shape == (D, len(QUANTILE_LEVELS))
        assert (sp.quantiles[:, 1:] >= sp.quantiles[:, :-1]).all()
        assert torch.equal(sp.quantiles[:, 0], a.min(0).values)
        assert torch.equal(sp.quantiles[:, -1], a.max(0).values)
        # interior quantiles come from a sample of whole windows (correlated positions): the median is
        # near the middle rank
        median = sp.quantiles[:, QUANTILE_LEVELS.index(0.5)]
        below, under = (a <= median).double().mean(0), (a < median).double().mean(0)
        assert (below >= 0.25).all() and (under <= 0.75).all(), (site, below.min(), under.max())
    # AbsTopK keeps a quarter of every sparse site's nodes at each position
    assert abs(profile.sites["0.mlp.post_act"].frequency.mean() - 0.25) < 0.01
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_examples_have_the_stated_activation_in_their_bin(profiled):
    model, _, profile, acts, _ = profiled
    T, c = profile.windows.tokens.shape[1], CFG.context
    n_examples = 0
    for site, sp in profile.sites.items():
        a = acts[site].reshape(-1, acts[site].shape[-1])  # (positions, D)
        D = a.shape[1]
        assert sp.ex_where.shape == (D, 2, len(BIN_FRACTIONS), CFG.examples)
        assert sp.ex_context.shape == (D, 2, len(BIN_FRACTIONS), CFG.examples, 2 * c + 1)
        found = sp.ex_where >= 0
        n_examples += int(found.sum())
        node = torch.arange(D)[:, None, None, None].expand_as(sp.ex_where)
        where = sp.ex_where.clamp(min=0)
        # the stated value is the activation at the stated position
        actual = a[where, node]
        assert torch.allclose(actual[found], sp.ex_value[found], atol=1e-5)
        assert sp.ex_value[~found].isnan().all()
        # contexts hold the node's activations around it (float16), inside the window
        offsets = torch.arange(-c, c + 1)
        pos = where[..., None] % T + offsets
        inside = (pos >= 0) & (pos < T) & found[..., None]
        ctx_actual = a[(where[..., None] - where[..., None] % T + pos.clamp(0, T - 1)), node[..., None]]
        assert torch.allclose(sp.ex_context.float()[inside], ctx_actual[inside].half().float())
        # examples within a side are distinct positions, and lie inside their bin's thresholds
        for s, sign in enumerate((1.0, -1.0)):
            thr = sign * sp.thresholds[:, s]  # (D, bins), descending in sign-space
            ok = ~thr.isnan()
            assert (thr[:, 1:][ok[:, 1:]] <= thr[:, :-1][ok[:, 1:]]).all()
            v = sign * sp.ex_value[:, s]
            upper = torch.cat([torch.full((D, 1), math.inf), thr[:, :-1]], 1)
            has = found[:, s]
            assert (v[has] >= thr[..., None].expand_as(v)[has]).all()
            assert (v[has] <= upper[..., None].expand_as(v)[has]).all()
            for d in range(D):
                w = sp.ex_where[d, s][found[d, s]]
                assert len(set(w.tolist())) == len(w)
        # the 0.1 % bins are exact: their examples rank among the top ceil(0.1 % x firing) values
        firing = a != 0
        n_fire = firing.sum(0)
        ranked = torch.where(firing, a, -math.inf).sort(0, descending=True).values  # (positions, D)
        for d in torch.nonzero(n_fire > 0).flatten().tolist()[:20]:
            r = math.ceil(BIN_FRACTIONS[0] * int(n_fire[d]))
            top = sp.ex_value[d, 0, 0][found[d, 0, 0]]
            assert len(top) == min(r, CFG.examples)
            assert (top >= ranked[r - 1, d]).all()
    assert n_examples > 0.5 * sum(len(sp.mean) for sp in profile.sites.values()) * 2 * len(BIN_FRACTIONS)


def test_node_records_rerun_through_the_model(profiled):
    model, tok, profile, _, _ = profiled
    docs = profile.windows.docs
    freq = profile.sites["1.mlp.post_act"].frequency
    index = int(torch.nonzero((freq > 0.05) & (freq < 0.95))[0])  # a neuron that fires, not always
    rec = profile.node(f"1.mlp.post_act[{index}]")
    assert rec.node == f"1.mlp.post_act[{index}]"
    assert len(rec.quantiles) == len(QUANTILE_LEVELS) and len(rec.top_thresholds) == len(BIN_FRACTIONS)
    assert 0 < rec.frequency < 1
    assert {(e.side, e.fraction) for e in rec.examples} <= {
        (s, f) for s in ("top", "bottom") for f in BIN_FRACTIONS
    }
    for e in rec.examples:
        window = profile.windows.tokens[e.window]
        assert e.tokens[e.center] == int(window[e.position])
        assert e.tokens == window[e.position - e.center : e.position - e.center + len(e.tokens)].tolist()
        assert (
            len(e.values) == len(e.tokens) and abs(e.values[e.center] - e.value) < 1e-2 * abs(e.value) + 1e-3
        )
        with torch.no_grad():  # the window on its own, re-run: same activation
            _, acts = model(window[None], capture=["1.mlp.post_act"])
        assert abs(float(acts["1.mlp.post_act"][0, e.position, index]) - e.value) < 1e-4
        text = tok.decode(e.tokens)
        if "\ufffd" not in text:
            assert docs[e.doc].text[e.char_start : e.char_end] == text
    with pytest.raises(KeyError):
        profile.node("1.mlp.post_act[100000]")
    with pytest.raises(ValueError):
        profile.node("not a node")


def test_config_limits_are_validated():
    with pytest.raises(ValidationError):
        ProfileConfig(tokens=0)
    with pytest.raises(ValidationError):
        ProfileConfig(examples=1000)
    with pytest.raises(ValidationError):
        ProfileConfig(unknown=1)
