import pytest

from worker.engine.config import preset
from worker.engine.train import train


@pytest.fixture(scope="session")
def test_model(tmp_path_factory):
    """A model trained with the `test` preset (seconds), shared by the tests that need one."""
    out = tmp_path_factory.mktemp("models") / "test-sparse"
    train(preset("test"), out)
    return out


@pytest.fixture(scope="session")
def dense_test_model(tmp_path_factory):
    """A dense model of the `test` shape, briefly trained: the frozen side of the bridge tests."""
    out = tmp_path_factory.mktemp("models") / "test-dense"
    run = preset("test", dense=True, steps=40)
    run.train = run.train.model_copy(update={"max_corpus_bytes": 300_000})
    train(run, out)
    return out


@pytest.fixture(scope="session")
def bridged_test_model(tmp_path_factory, dense_test_model):
    """A sparse model of the `test` preset trained for 30 steps with bridges to dense_test_model."""
    from worker.engine.bridges import bridged_run, train_bridged

    out = tmp_path_factory.mktemp("models") / "test-bridged"
    run = bridged_run(dense_test_model, "test", steps=30)
    run.train = run.train.model_copy(update={"eval_every": 15})
    train_bridged(run, out)
    return out


# ---------------------------------------------------------------- backend (see tests/backend_support.py)


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database of this test alone, dropped afterwards (CIRCUITS_TEST_POSTGRES names
    the server's admin database; the tests fail, not skip, when it is unreachable)."""
    from backend_support import create_postgres_database, drop_postgres_database

    url, name = create_postgres_database()
    yield url
    drop_postgres_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    """None (SQLite in the test's data dir) or a fresh PostgreSQL database."""
    yield request.getfixturevalue("postgres_url") if request.param == "postgres" else None


@pytest.fixture
def make_api(tmp_path):
    """make_api(**settings) -> Api: an app on a fresh data dir (SQLite unless database_url is given)."""
    import torch
    from backend_support import FAST, Api

    from backend.settings import Settings

    apis, threads = [], torch.get_num_threads()
    torch.set_num_threads(FAST["torch_threads"])  # here, in the main thread: see limit_torch_threads

    def make(**overrides):
        api = Api(Settings(**{"data_dir": tmp_path / "data", **FAST, **overrides}))
        apis.append(api)
        return api

    yield make
    for api in apis:
        api.close()
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- read API (tests/test_api_*.py)

API_TASK = "single_double_quote"
API_SITES = ["0.mlp.act_in", "0.mlp.post_act", "0.mlp.resid_delta"]  # profiled (fewer rows to write)


@pytest.fixture(scope="session")
def api_world(test_model):
    """Engine results computed once and written into every API test database: a profile of three
    sites of the test model, and a circuit on API_TASK (a hand-picked node set through the MLP of
    layer 0 with its real weight edges, test losses and calibration, as a prune job would store it)."""
    import torch

    from worker.engine import activations as act
    from worker.engine.ablation import Ablation, prunable_sites
    from worker.engine.checkpoints import load_model
    from worker.engine.circuit import Circuit, edges_from_weights, make_nodes
    from worker.engine.data import load_corpus, split_corpus
    from worker.engine.masks import NodeMasks
    from worker.engine.prune import PruneConfig, calibrate, circuit_losses, task_logits
    from worker.engine.sites import parse_node
    from worker.engine.tasks import build_task, get_task
    from worker.engine.tasks.base import pair_labels

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok, run = load_model(test_model)
    docs, _ = split_corpus(load_corpus(run.train.corpus, run.train.max_corpus_bytes), run.train.val_percent)
    cfg = act.ProfileConfig(tokens=4096, batch_tokens=2048, context=4, sample_positions=1024, exact=8)
    windows = act.corpus_windows(tok, docs, cfg.tokens // model.cfg.n_ctx, model.cfg.n_ctx, cfg.seed)
    profile = act.profile_windows(model, windows, cfg, sites=API_SITES)
    full = act.profile_windows(model, windows, cfg.model_copy(update={"examples": 1}))  # every site's means
    means = full.means

    fc_in, fc_out = model.blocks[0].mlp.fc_in.weight, model.blocks[0].mlp.fc_out.weight
    ins = [i for i in range(model.cfg.d_model) if fc_in[:, i].count_nonzero() > 0][:4]
    posts = sorted({int(j) for i in ins for j in fc_in[:, i].nonzero().flatten()})
    posts = [j for j in posts if fc_out[:, j].count_nonzero() > 0][:6]  # each reaches the residual
    outs = sorted({int(fc_out[:, j].nonzero()[0]) for j in posts})[:4]
    names = (
        [f"0.mlp.act_in[{i}]" for i in ins]
        + [f"0.mlp.post_act[{j}]" for j in posts]
        + [f"0.mlp.resid_delta[{k}]" for k in outs]
    )
    task = build_task(get_task(API_TASK), tok)
    dims = model.site_dims()
    masks = NodeMasks({s: dims[s] for s in prunable_sites(model)}, 0.0, 0.0, torch.Generator())
    keep = torch.zeros(masks.tau.numel())
    for n in names:
        site, index = parse_node(n)
        keep[masks.slices[site][0] + index] = 1
    train = task.train[:128]
    ablation = Ablation("mean", means)
    scale, shift = calibrate(task_logits(model, task, train, keep, masks, ablation), pair_labels(len(train)))
    circuit = Circuit(
        task=API_TASK,
        model="test",
        target_loss=PruneConfig().target_loss,
        nodes=make_nodes(names, {n: 1.0 - 0.01 * i for i, n in enumerate(names)}),
        edges=edges_from_weights(model, names),
        losses=circuit_losses(model, task, ablation, masks, keep, scale, shift),
        calibration={"scale": scale, "shift": shift},
        curve=[{"k": 0, "loss": 0.7}, {"k": len(names), "loss": 0.6}],
    )
    torch.set_num_threads(threads)
    return {
        "folder": test_model,
        "profile": profile,
        "means": means,
        "circuit": circuit,
        "test_pairs": len(task.test),
    }


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def api_backend(request, api_world, tmp_path_factory):
    """A running app per database backend with the test model registered, profiled (three sites) and
    one circuit: SimpleNamespace(api, client, key, model_id, circuit_id, world)."""
    from types import SimpleNamespace

    import torch
    from backend_support import FAST, Api, register_model
    from safetensors.torch import save_file
    from sqlalchemy import update

    from backend.db import Database
    from backend.jobs.store import task_row, write_circuit, write_profile
    from backend.models import Model
    from backend.settings import Settings
    from worker.engine.ablation import MEANS
    from worker.engine.prune import PruneConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from backend_support import create_postgres_database, drop_postgres_database

    url, name = create_postgres_database() if request.param == "postgres" else (None, None)  # its own
    settings = Settings(data_dir=tmp_path_factory.mktemp(f"api-{request.param}"), database_url=url, **FAST)
    api = Api(settings)
    model_id = register_model(settings, api_world["folder"], "test-sparse")
    folder = settings.artifact(f"models/{model_id}")
    save_file({k: v.contiguous() for k, v in api_world["means"].items()}, str(folder / MEANS))
    db = Database(settings)
    with db.session() as s:
        write_profile(s, model_id, api_world["profile"], "stdlib")
        s.execute(update(Model).where(Model.id == model_id).values(profiled=True))
        task = task_row(s, API_TASK)
        circuit_id = write_circuit(s, model_id, task.id, api_world["circuit"], PruneConfig(), "0" * 32)
    db.dispose()
    yield SimpleNamespace(
        api=api,
        client=api.client,
        key=api.key,
        settings=settings,
        model_id=model_id,
        circuit_id=circuit_id,
        world=api_world,
        backend=request.param,
    )
    api.close()
    if name is not None:
        drop_postgres_database(name)
    torch.set_num_threads(threads)
