"""KDCI's settings: the ``kdci`` section of a distillation config, defaults in code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KDCIConfig:
    """KDCI (Wang et al., CVPR 2024): confounder dictionary + backdoor-adjusted student logits."""

    enabled: bool = False
    k: int = 0  # dictionary size; 0 = the method's default (DAFL 8, DeepInversion 32)
    pca_dim: int = 0  # PCA components used for clustering; 0 = keep min(C, 64)
    hidden: int = 256  # additive attention width
    backend: str = "sklearn"  # k-means backend: sklearn (CPU) | cuml (GPU, the gpu extra) |
    #   auto (cuML where a GPU and cuML are present, else scikit-learn)
    algorithm: str = "auto"  # k-means: auto | full | minibatch (sklearn); cuML runs full
    n_init: int = 1  # k-means++ restarts per refresh
    features: str = "observed"  # per-round refresh: observed (reuse KD) | source (score again)
    source: str = "teacher"  # dictionary features: teacher | model (another model) | random
    source_arch: str = ""  # source=model: the other pre-trained model's architecture
    source_checkpoint: str = ""  # source=model: its weights; empty = cached embedded one
    random_lambda: bool = False  # ablation (Table 4): random attention weights, not learned
    random_z: bool = False  # ablation (Table 4): random prototypes, P(z) kept
    uniform_p: bool = False  # P(z_i) = 1/K: NOT Table 4's "w/o P(z)" (clustering gives ~1/K
    #   anyway); kept as the ablation this project ran before without_p
    without_p: bool = False  # ablation (Table 4's "w/o P(z)"): P removed from Eq. 4, P(z_i) = 1
    fusion: str = "softmax"  # how lambda and P(z) form the prior (kdci_ray/kdci/attention.py):
    #   softmax | expectation | scaled (bounded learned scale) | log_prior (the positive control:
    #   a fixed log class prior of the dictionary, no attention)
    projection: bool = False  # a learned C x C output projection of the prior (identity start)
    space: str = "logits"  # dictionary features: logits | log_probs (log-softmax of the logits)
    tau: float = 1.0  # log_prior only: the adjustment is tau * centred log class prior (1: the
    #   substitution prior added; -1: removed, favouring the classes the substitution data lacked)
    train_through: bool = True  # the KD loss sees the adjusted logits (the paper); false (only
    #   with log_prior): post-hoc, the student trains as vanilla and only predictions are adjusted
    cache: bool = True  # build-once dictionaries are saved and shared across trials
    lr_scale: float = 1.0  # attention learning rate = lr_scale * train.lr
