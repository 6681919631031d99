"""KDCI: de-confounded data-free KD (Wang et al., CVPR 2024) as a plug-in for any method.

One object, :class:`KDCI` (``plugin.py``), is what the distillation loop builds and calls; its
settings are the ``kdci`` config section, :class:`KDCIConfig` (``settings.py``). Its parts, by
responsibility: the confounder dictionary (``dictionary.py``: scoring and clustering), the Table
4/5 ablations (``ablations.py``), dictionaries as shared artifacts (``artifact.py``), the learnable
attention and fusion math (``attention.py``, ``KDCIAttention``), the DDP collectives
(``collectives.py``) and the deployable compensated student (``deploy.py``).
"""

from kdci_ray.kdci.ablations import apply_ablations, random_dictionary
from kdci_ray.kdci.artifact import DictionarySpec, DictionaryStore
from kdci_ray.kdci.attention import KDCIAttention, attention_entropy, prior_ratio
from kdci_ray.kdci.deploy import CompensatedStudent, load_student
from kdci_ray.kdci.dictionary import ConfounderDictionary, build_dictionary, teacher_logits
from kdci_ray.kdci.plugin import KDCI
from kdci_ray.kdci.settings import KDCIConfig

__all__ = ["KDCI", "CompensatedStudent", "ConfounderDictionary", "DictionarySpec",
           "DictionaryStore", "KDCIAttention", "KDCIConfig", "apply_ablations",
           "attention_entropy", "build_dictionary", "load_student", "prior_ratio",
           "random_dictionary", "teacher_logits"]
