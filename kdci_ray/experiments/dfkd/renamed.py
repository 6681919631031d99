"""Config keys that were renamed: old flat key -> new flat key.

The methods' loss weights used the reference code's short flags (``dafl.ie``, ``cmi.cr``, ...);
they are spelled out now (``dafl.entropy_weight``, ``cmi.contrastive_weight``, ...) with the
paper's term in each method's docstring and field comment. An old key is an error that names the
new one (``keys.unknown_key_error``); it is never silently translated, so a saved config or sweep
that uses an old key fails before anything runs.
"""

from __future__ import annotations

RENAMED: dict[str, str] = {
    # DAFL (paper Eq. 7: L_oh, L_a, L_ie)
    "dafl.oh": "dafl.onehot_weight",
    "dafl.ie": "dafl.entropy_weight",
    "dafl.a": "dafl.activation_weight",
    # CMI
    "cmi.bn": "cmi.bn_weight",
    "cmi.oh": "cmi.onehot_weight",
    "cmi.adv": "cmi.adversarial_weight",
    "cmi.cr": "cmi.contrastive_weight",
    # Fast
    "fast.bn": "fast.bn_weight",
    "fast.oh": "fast.onehot_weight",
    "fast.adv": "fast.adversarial_weight",
    # DeepInversion
    "deepinv.bn": "deepinv.bn_weight",
    "deepinv.tv": "deepinv.tv_weight",
    "deepinv.l2": "deepinv.l2_weight",
    "deepinv.comp": "deepinv.competition_weight",
    # MosaicKD
    "mosaickd.local": "mosaickd.patch_adversarial_weight",
    "mosaickd.align": "mosaickd.align_weight",
    "mosaickd.adv": "mosaickd.adversarial_weight",
    "mosaickd.balance": "mosaickd.balance_weight",
}
