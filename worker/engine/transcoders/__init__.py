"""Transcoders (and an SAE baseline) over the MLPs of a dense model, and attribution circuits between
their features (PAPERS.md section 6).

    coders.py       the coders (z = ReLU(W_enc x + b_enc), y = W_dec z + b_dec), the sweep's settings
    replacement.py  what a transcoder reads and writes; MLPs replaced inside the forward pass
    training.py     training a sweep of coders together, and evaluating it again
    evaluation.py   validation figures, transcoder vs SAE at matched L0, the sweep as a table
    results.py      those figures as typed records (sweep.json, the API)
    storage.py      a transcoder folder on disk, checked against its dense model's fingerprint
    features.py     features as nodes `{l}.mlp.transcoder[j]`: profiles and de-embedding
    attribution.py  attribution graphs between features and circuits pruned from them
"""

from .attribution import (
    Attribution,
    CircuitConfig,
    attribute,
    attribution_edges,
    feature_effects,
    logit_difference,
    prune_features,
    task_logits_with,
    task_loss_with,
    transcoder_circuit,
)
from .coders import KINDS, CoderBank, SparseCoder, TranscoderConfig, TranscoderRun, Transcoders
from .evaluation import evaluate_coders, matched_comparison, sweep_table
from .features import de_embedding, feature_activations, parse_feature, profile_features
from .replacement import Replacement, coder_fn, coder_times, mlp_io, norm_scale, replacement_model
from .results import LayerReference, Matched, MatchedRow, MatchedSetting, Reference, SweepPoint
from .storage import (
    CODERS,
    CONFIG,
    SWEEP,
    load_transcoders,
    read_transcoder_run,
    read_transcoders,
    remove_folder,
    save_transcoders,
)
from .training import _streams, evaluate_transcoders, train_transcoders

__all__ = [
    "CODERS",
    "CONFIG",
    "KINDS",
    "SWEEP",
    "Attribution",
    "CircuitConfig",
    "CoderBank",
    "LayerReference",
    "Matched",
    "MatchedRow",
    "MatchedSetting",
    "Reference",
    "Replacement",
    "SparseCoder",
    "SweepPoint",
    "TranscoderConfig",
    "TranscoderRun",
    "Transcoders",
    "_streams",
    "attribute",
    "attribution_edges",
    "coder_fn",
    "coder_times",
    "de_embedding",
    "evaluate_coders",
    "evaluate_transcoders",
    "feature_activations",
    "feature_effects",
    "load_transcoders",
    "logit_difference",
    "matched_comparison",
    "mlp_io",
    "norm_scale",
    "parse_feature",
    "profile_features",
    "prune_features",
    "read_transcoder_run",
    "read_transcoders",
    "remove_folder",
    "replacement_model",
    "save_transcoders",
    "sweep_table",
    "task_logits_with",
    "task_loss_with",
    "train_transcoders",
    "transcoder_circuit",
]
