"""KDCI: de-confounded data-free KD (Wang et al., CVPR 2024) as a plug-in for any method."""

from kdci_ray.kdci.ablations import apply_ablations, random_dictionary
from kdci_ray.kdci.artifact import DictionarySpec, DictionaryStore
from kdci_ray.kdci.deploy import CompensatedStudent, load_student
from kdci_ray.kdci.dictionary import ConfounderDictionary, build_dictionary
from kdci_ray.kdci.hook import KDCIHook, plugin_from_config
from kdci_ray.kdci.intervention import BackdoorAdjustment
from kdci_ray.kdci.plugin import (
    KDCI,
    KDCISettings,
    attention_entropy,
    prior_ratio,
    teacher_logits,
)

__all__ = ["KDCI", "BackdoorAdjustment", "CompensatedStudent", "ConfounderDictionary",
           "DictionarySpec", "DictionaryStore", "KDCIHook", "KDCISettings", "apply_ablations",
           "attention_entropy", "build_dictionary", "load_student", "plugin_from_config",
           "prior_ratio", "random_dictionary", "teacher_logits"]
