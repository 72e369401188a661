"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from worker.engine.ablation import AblationMode
from worker.engine.sites import NODE_RE, Site
from worker.engine.transcoders import Matched, Reference, SweepPoint, TranscoderRun

# ---------------------------------------------------------------- jobs


class Strict(BaseModel):
    """A request body: unknown fields are named, not ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    params: dict
    status: JobStatusName
    progress: float = Field(description="0..1")
    stage: str
    message: str
    error: str | None
    attempts: int
    result: dict = Field(description="references to what the job made, e.g. {model_id} or {circuit_id}")
    cancel_requested: bool
    stalled: bool = Field(False, description="running, but its worker has not reported for a while")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class JobList(BaseModel):
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class SessionRead(BaseModel):
    authenticated: bool = Field(description="writes from this caller are accepted")
    via: Literal["cookie", "key"] | None = Field(
        description="`cookie`: this browser signed in through `circuits serve`'s URL; `key`: x-api-key"
    )
    key_prefix: str | None = Field(description="the first characters of the key in use")


class ErrorBody(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body/query/path, then the field names")
    msg: str


class ValidationErrorBody(BaseModel):
    """Every 422: `detail` names each offending field in one line; `errors` lists them when the
    request did not match its schema."""

    detail: str
    errors: list[FieldError] | None = None


# ---------------------------------------------------------------- models, tasks, circuits, nodes, playground

NODE_DESCRIPTION = "a node name `site[index]`, e.g. `0.mlp.post_act[12]` (brackets URL-encoded in paths)"
NodeNameStr = Annotated[str, Field(pattern=NODE_RE.pattern)]


class ModelSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: Literal["sparse", "dense"]
    status: Literal["training", "ready", "failed"]
    n_params: int
    profiled: bool = Field(description="node statistics and activation examples are available")
    bridged: bool = Field(False, description="trained with bridges to a dense model (can steer it)")
    demo: bool = Field(False, description="shipped with the app (the demo bundle), not trained here")
    created_at: datetime


class ModelRead(ModelSummary):
    config: dict = Field(description="the run configuration (model shape and training settings)")
    summary: dict = Field(description="final figures of training: validation loss, steps, ...")
    job_id: str | None
    sites: list[Site] = Field(
        description="the sites holding nodes in forward order (GET /models/{id}/sites: every site)"
    )
    n_circuits: int


class ModelList(BaseModel):
    items: list[ModelSummary]
    total: int
    limit: int
    offset: int


class ModelMetrics(BaseModel):
    model_id: int
    points: list[dict[str, float | int | str | None]] = Field(
        description="training curve records in step order: step, loss, lr, density, val_loss (eval steps)"
    )


class TaskSummary(BaseModel):
    name: str
    builtin: bool
    completion_a: str
    completion_b: str
    description: str
    n_pairs: int | None = Field(description="prompt pairs of a custom task; None for corpus-mined tasks")
    n_circuits: int


class TaskRead(TaskSummary):
    created_at: datetime | None = Field(description="custom tasks: when it was created")


class TaskList(BaseModel):
    items: list[TaskSummary]
    total: int


class TaskSample(BaseModel):
    split: Literal["train", "test"]
    source: str = Field(description="where the pair comes from: `path:line` or `pairs[i]`")
    prompt_a: str = Field(description="the prompt whose correct next token starts completion_a")
    prompt_b: str = Field(description="the prompt whose correct next token starts completion_b")
    completion_a: str
    completion_b: str


class TaskSamples(BaseModel):
    task: str
    model_id: int | None = Field(description="prompts as this model sees them (tokenised, truncated)")
    items: list[TaskSample]


class CircuitSummary(BaseModel):
    id: int
    model_id: int
    model_name: str
    task: str
    target_loss: float
    n_nodes: int
    n_edges: int
    losses: dict[str, float | None]
    transcoder_id: int | None = Field(
        None, description="transcoder circuits: the transcoders behind its features"
    )
    created_at: datetime

    @computed_field(description="the circuit's calibrated loss on the test split is <= its target")
    @property
    def meets_target(self) -> bool | None:
        test = self.losses.get("circuit")
        return None if test is None else test <= self.target_loss


class OverviewModel(BaseModel):
    id: int
    name: str
    kind: Literal["sparse", "dense"]
    n_params: int
    val_loss: float | None = Field(description="final validation loss of training")
    demo: bool


class TaskCircuit(BaseModel):
    model_id: int
    circuit_id: int
    full_loss: float | None = Field(description="the full model's task loss (test split)")
    circuit_loss: float | None = Field(description="the circuit's calibrated task loss (test split)")
    target_loss: float
    nodes: int
    edges: int
    meets_target: bool | None


class OverviewTask(BaseModel):
    task: str
    sparse: TaskCircuit | None
    dense: TaskCircuit | None


class Headline(BaseModel):
    """The paper's headline figure: circuit size needed for a task loss, sparse vs dense."""

    targets: list[float] = Field(description="task-loss targets (the x of the paper's figure is size)")
    sparse: list[float | None] = Field(
        description="per target: geometric mean over `tasks[i]` tasks of the "
        "smallest circuit size reaching it; None when no task enters"
    )
    dense: list[float | None]
    tasks: list[int] = Field(description="per target: the tasks where both models reach it on their curves")
    size: Literal["edges", "nodes"] = Field(
        description="what size counts: edges when every curve point has an edge count, else kept nodes"
    )


class EdgeRatio(BaseModel):
    geomean: float | None = Field(
        description="geometric mean of dense edges / sparse edges over the tasks where both circuits meet "
        "their target (an empty circuit counts as 1 edge)"
    )
    tasks: int
    target: float = Field(description="the paper's figure (circuits about 16x smaller in sparse models)")


class Overview(BaseModel):
    demo: bool = Field(description="a demo model (shipped with the app) is present")
    models: list[OverviewModel] = Field(description="the sparse model and its dense twin shown")
    tasks: list[OverviewTask]
    headline: Headline
    edge_ratio: EdgeRatio


class CircuitList(BaseModel):
    items: list[CircuitSummary]
    total: int
    limit: int
    offset: int


class CircuitNodeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    site: str
    layer: int | None
    index: int
    tau: float = Field(description="the learnt mask logit (larger = more important)")


EdgeKind = Literal["weight", "residual", "qk", "attribution"]
ACTIVATION_DESCRIPTION = (
    "attribution edges: the input-dependent factor, mean over the task's prompts of the source feature's "
    "activation x the reader's frozen RMSNorm scale (where the target feature is active)"
)
WEIGHT_PRODUCT_DESCRIPTION = (
    "attribution edges: the input-invariant factor W_dec[:, i] . (g * W_enc[j]); weight = activation x this"
)


class CircuitEdgeRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    src: str
    dst: str
    weight: float
    kind: EdgeKind
    activation: float | None = Field(None, description=ACTIVATION_DESCRIPTION)
    weight_product: float | None = Field(None, description=WEIGHT_PRODUCT_DESCRIPTION)


class CircuitRead(CircuitSummary):
    calibration: dict[str, float]
    curve: list[dict[str, float | int | None]] = Field(description="loss vs kept nodes: [{k, loss}]")
    runs: list[dict] = Field(description="the hyper-parameter search, one record per run")
    validation: dict = Field(
        description="controls (random circuit, shuffled labels, nonsense task, generalisation gap) and "
        "`checks`: [{name, passed, value, criterion}]; empty when the circuit was not validated"
    )
    ablation: str = Field(
        description="what masked nodes were replaced by while pruning: mean, zero, resample"
    )
    unit: Literal["nodes", "edges"] = Field(
        "nodes", description="what the pruner's masks were on; `curve` k and the faithfulness points count it"
    )
    faithfulness: dict = Field(
        description="{metric, unit, pairs, modes: {mode: {m_full, m_empty, points: [{percent, nodes|edges, "
        "m, f}], cpr, cmd}}}: the faithfulness curve f(C) = (m(C) - m(empty)) / (m(full) - m(empty)) per "
        "ablation mode"
    )
    params: dict = Field(description="the pruning configuration used")
    nodes: list[CircuitNodeRead]
    edges: list[CircuitEdgeRead]


class NodeStats(BaseModel):
    mean: float
    frequency: float = Field(description="fraction of positions where the node is nonzero")
    quantiles: dict[str, float | None] = Field(description="level -> value over all positions")
    thresholds: dict[str, float | None] = Field(
        description="edge of each example bin: lowest value of a top bin, highest of a bottom bin"
    )


class ExampleRead(BaseModel):
    bin: str = Field(description="`top_0.1`, `top_1`, `top_10`, `top_50`, `bottom_0.1`, ...")
    rank: int
    activation: float = Field(description="the node's activation at the centre token")
    center: int = Field(description="index of the centre token in `tokens`")
    tokens: list[str] = Field(description="each context token decoded")
    token_ids: list[int]
    values: list[float] = Field(description="the node's activation at each context token")
    text: str | None = Field(description="the context's text in the corpus document")
    document: str | None = Field(description="the corpus document's path")
    offset: int | None


class EdgeRef(BaseModel):
    node: str = Field(description="the node at the other end")
    weight: float
    kind: EdgeKind
    activation: float | None = Field(None, description=ACTIVATION_DESCRIPTION)
    weight_product: float | None = Field(None, description=WEIGHT_PRODUCT_DESCRIPTION)


class TokenScore(BaseModel):
    id: int
    text: str
    score: float


class DeEmbedding(BaseModel):
    top: list[TokenScore] = Field(description="tokens whose embeddings drive the feature most")
    bottom: list[TokenScore] = Field(description="tokens whose embeddings suppress it most")


class NodeRead(BaseModel):
    model_id: int
    name: str
    site: str
    layer: int | None
    index: int
    stats: NodeStats | None = Field(description="None until the model has been profiled")
    examples: list[ExampleRead]
    circuits: list[int] = Field(description="circuits of this model that contain the node")
    circuit_id: int | None = Field(description="the circuit the edges below are taken from")
    incoming: list[EdgeRef]
    outgoing: list[EdgeRef]
    de_embedding: DeEmbedding | None = Field(
        None, description="transcoder features: top tokens of W_E . (g * W_enc[j]) (the direct path)"
    )
    transcoder_id: int | None = Field(None, description="transcoder features: the transcoders they belong to")


class NodeStatRow(BaseModel):
    name: str
    index: int
    mean: float
    frequency: float


class SiteNodes(BaseModel):
    model_id: int
    site: str
    items: list[NodeStatRow]


class PlaygroundRequest(Strict):
    prompt: str = Field(min_length=1, max_length=4000, description="text to run through the model")
    nodes: list[NodeNameStr] = Field(min_length=1, max_length=64, description=NODE_DESCRIPTION)


class TokenRead(BaseModel):
    id: int
    text: str


class PlaygroundResult(BaseModel):
    model_id: int
    tokens: list[TokenRead] = Field(description="the prompt's tokens (the last n_ctx if it was longer)")
    truncated: bool
    activations: dict[str, list[float]] = Field(description="node -> its activation at every token")
    top_next: list[TokenRead] = Field(description="the model's most likely next tokens after the prompt")
    top_next_probs: list[float]


class AblationRequest(Strict):
    off: list[NodeNameStr] = Field(default_factory=list, max_length=4096, description="nodes to ablate")
    on: list[NodeNameStr] = Field(default_factory=list, max_length=4096, description="extra nodes to keep")
    mode: Literal["keep", "ablate"] = Field(
        "keep",
        description="keep: the node set runs, every other node is mean-ablated (sufficiency); "
        "ablate: the node set is mean-ablated in the full model (necessity)",
    )
    ablation: AblationMode = Field(
        "mean",
        description="what an ablated node is replaced by: its mean (as when pruned by default), zero, or "
        "its value on a random pretraining window (resample, drawn afresh per request); transcoder "
        "circuits' features are always switched off (zero)",
    )
    pairs: int = Field(64, ge=1, le=512, description="test pairs to evaluate")
    show: int = Field(8, ge=0, le=64, description="pairs to return prompt by prompt")


class PromptResult(BaseModel):
    prompt: str = Field(description="the prompt's last tokens, decoded")
    expected: Literal["a", "b"]
    p_a: float = Field(description="probability of completion_a's first token (two-way softmax)")
    p_b: float


class AblationResult(BaseModel):
    circuit_id: int
    mode: Literal["keep", "ablate"]
    ablation: AblationMode = Field(description="the ablation applied (transcoder features: always zero)")
    n_nodes: int = Field(description="size of the node set after the toggles")
    pairs: int
    loss: float = Field(description="two-class cross-entropy per prompt (mean)")
    loss_calibrated: float = Field(description="the same with the circuit's logit scale and shift")
    accuracy: float
    p_correct: float = Field(description="mean probability of the correct completion")
    p_a: float = Field(description="mean probability of completion_a on prompts that expect it")
    p_b: float = Field(description="mean probability of completion_b on prompts that expect it")
    full_loss: float = Field(description="the unablated model on the same pairs")
    prompts: list[PromptResult]
    seconds: float


class TraceRequest(Strict):
    prompts: list[Annotated[str, Field(min_length=1, max_length=4000)]] = Field(
        min_length=1, max_length=2, description="one prompt, or a pair (class A, class B) shown side by side"
    )
    off: list[NodeNameStr] = Field(default_factory=list, max_length=4096, description="nodes to ablate")
    ablation: AblationMode = Field("mean", description="what the nodes outside the circuit are replaced by")


class HeadRead(BaseModel):
    layer: int
    head: int = Field(description="q/k/v channel index // d_head")
    nodes: list[str] = Field(description="the circuit's q/k/v channels of this head")
    pattern: list[float] = Field(description="attention of the last position to every position")
    sink: float | None = Field(description="attention to the sink slot (None: the model has no sink)")


class PromptTrace(BaseModel):
    prompt: str
    tokens: list[TokenRead] = Field(description="the prompt's tokens (the last n_ctx if it was longer)")
    truncated: bool
    activations: dict[str, list[float]] = Field(
        description="circuit node -> its value at every token, the circuit running alone (rest mean-ablated)"
    )
    logit_diff: float = Field(description="logit(A) - logit(B) at the last token, circuit run, uncalibrated")
    logit_diff_calibrated: float = Field(description="the same with the circuit's logit scale")
    full_logit_diff: float = Field(description="logit(A) - logit(B) of the full model")
    heads: list[HeadRead] = Field(description="every head with q/k/v channels in the circuit")


class TraceResult(BaseModel):
    circuit_id: int
    completion_a: str
    completion_b: str
    traces: list[PromptTrace]
    seconds: float


class NodeLabel(BaseModel):
    node: str
    label: str = Field(description="a short automatic label: top tokens, class sign, logit weight")
    top_tokens: list[str] = Field(
        description="centre tokens of the top 0.1 % / 1 % profile examples, most frequent first"
    )
    a_mean: float | None = Field(description="mean at the last token of class-A test prompts (circuit run)")
    b_mean: float | None = Field(description="the same on class-B prompts")
    logit_weight: float | None = Field(
        description="residual writes: direct weight on logit(A) - logit(B) (final norm gain x unembedding)"
    )
    head: int | None = Field(description="q/k/v channels: their head (index // d_head)")


class CircuitLabels(BaseModel):
    circuit_id: int
    profiled: bool = Field(description="false: the model has no profile, labels carry no top tokens")
    items: list[NodeLabel]


class SteerRequest(Strict):
    task: str = Field(min_length=1, max_length=128, description="task whose test prompts are steered")
    node: str = Field(min_length=4, max_length=64, description=NODE_DESCRIPTION)
    mode: Literal["add", "set"] = Field("add", description="add the strength to the node, or set it to it")
    strengths: list[Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="values to sweep (default: from the node's mean on the prompts' class towards and past "
        "its mean on the other class, 0 to 4 times the difference)",
    )
    prompt_class: Literal["a", "b"] = Field("a", description="steer the prompts that expect completion_a / b")
    pairs: int = Field(64, ge=1, le=512, description="test pairs whose prompts of that class are used")
    position: Literal["last", "all"] = Field("last", description="edit the node at the last position or all")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the random control node")
    correct_only: bool = Field(False, description="only the prompts the unsteered dense model gets right")


class SteerCurve(BaseModel):
    dense_p_a: list[float] = Field(
        description="per strength: the dense model's mean P(completion_a), two-way"
    )
    dense_p_b: list[float]
    sparse_p_a: list[float] = Field(description="the same for the edited sparse model")
    sparse_p_b: list[float]
    dense_p_a_vocab: list[float] = Field(description="P(completion_a's first token) over the whole vocab")
    dense_p_b_vocab: list[float]
    sparse_p_a_vocab: list[float]
    sparse_p_b_vocab: list[float]


class SteerCurves(BaseModel):
    node: SteerCurve
    control: SteerCurve = Field(description="a random node of the same site, the same strengths")


class SteerResult(BaseModel):
    model_id: int
    dense_model_id: int | None = Field(description="the dense model steered (None: found by its path)")
    task: str
    completion_a: str
    completion_b: str
    node: str
    control_node: str
    location: str = Field(description="bridge location where the change is read off and decoded")
    mode: Literal["add", "set"]
    position: Literal["last", "all"]
    prompt_class: Literal["a", "b"]
    correct_only: bool
    prompts: int = Field(description="prompts steered")
    node_means: dict[str, float] = Field(description="the node at the last position: mean on A and B prompts")
    strengths: list[float]
    baseline: dict[str, float] = Field(
        description="unsteered dense_p_a, dense_p_b, sparse_p_a, sparse_p_b, ..."
    )
    curves: SteerCurves
    seconds: float


# ---------------------------------------------------------------- transcoders


class TranscoderSummary(BaseModel):
    id: int
    model_id: int
    model_name: str
    width: int = Field(description="latents per layer")
    l1: list[float]
    selected_l1: float = Field(
        description="the L1 coefficient of the transcoders behind features and circuits"
    )
    clean_ce: float
    transcoder_better_settings: int = Field(
        description="settings where the transcoder's CE <= the SAE's at matched L0"
    )
    settings: int
    job_id: str | None
    created_at: datetime


class TranscoderList(BaseModel):
    items: list[TranscoderSummary]
    total: int


class TranscoderRead(TranscoderSummary):
    config: TranscoderRun = Field(description="sweep settings and the dense model's fingerprint")
    reference: Reference = Field(description="clean CE; per layer the CE with the MLP zero- / mean-ablated")
    points: list[SweepPoint]
    curves: dict[str, dict[str, list[dict[str, float]]]] = Field(
        description="plot-ready: layer -> kind -> [{l0, ce, l1}] sorted by L0"
    )
    matched: Matched
    feature_sites: list[Site] = Field(description="`{l}.mlp.transcoder`: the features as nodes of the model")
    circuits: list[int] = Field(description="transcoder circuits built from these features")


class ProbeSpecRead(BaseModel):
    name: str
    task: str = Field(description="the task whose held-out prompts the probe turns its knob on")
    knob: str = Field(description="what one step of the knob adds")
    filler: str = Field(description="the text appended per step at the end of every prompt")
    values: list[int]
    description: str


class ProbePoint(BaseModel):
    value: int = Field(description="knob value: filler repeats appended")
    tokens: int = Field(description="tokens appended")
    full_accuracy: float
    full_loss: float
    circuit_accuracy: float
    circuit_loss: float = Field(description="calibrated with the circuit's scale and shift")
    node_a: float = Field(description="the node's mean activation at the last position, A prompts")
    node_b: float = Field(description="the same on the B prompts")


class ProbeResultRead(BaseModel):
    job_id: str
    probe: str
    knob: str
    node: str
    pairs: int
    ablation: str
    points: list[ProbePoint]
    finished_at: datetime | None


class CircuitProbes(BaseModel):
    circuit_id: int
    available: list[ProbeSpecRead] = Field(description="the probes that run on this circuit's task")
    results: list[ProbeResultRead] = Field(description="finished probe jobs of this circuit, newest first")
