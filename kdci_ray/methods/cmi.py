"""CMI: Contrastive Model Inversion for Data-Free Knowledge Distillation (Fang et al., IJCAI 2021).

Each synthesis round re-initialises a generator and optimises it together with a fresh latent
batch (Adam) for ``g_steps`` steps on: BN-statistics matching (``bn_weight``), cross-entropy to
sampled targets (``onehot_weight``), the decision-adversarial term (``adversarial_weight``:
maximise the teacher-student KL on the samples where their decisions still agree) and the
contrastive term (``contrastive_weight``, paper Eq. 9): the
teacher's instance-mean features (the inputs of its stages, averaged over space; ``features``) of a
*local* view (random resized crop) and a *global* view (padded random crop) of each image go
through a learned ``MLPHead``; each local view must pick its own global view among the batch and
the negatives drawn from a memory bank of earlier rounds' features (InfoNCE at temperature
``cr_temperature``).
The best batch goes into an in-memory pool the student samples from (augmented). The loss
weights are the reference's ``--bn``, ``--oh``, ``--adv`` and ``--cr``; the view, adversarial
and pool helpers are shared with Fast (``methods/inversion.py``).

Reference: zju-vipa/CMI ``datafree/synthesis/contrastive.py`` (``CMISynthesizer``) and the
``--method cmi`` setup of its ``datafree_kd.py``; the settings are ``scripts/cmi_cifar10.sh``
(also zju-vipa/Fast-Datafree ``scripts/cmi_cifar.sh``). Contrastive features (``features``):
``stages`` (default) hooks the input of each stage of the teacher
(``bn_statistics.stage_inputs``); for a ResNet-34 teacher that is ``layer1..layer4``, 64 + 64 +
128 + 256 = 512 channels, exactly the reference's ``feature_layers = [teacher.layer1, ...,
teacher.layer4]`` (its ``InstanceMeanHook`` averages each layer's *input*). ``bn`` hooks every
BatchNorm input, the reference's choice for every other teacher (``feature_layers=None``).
Deviations:
- WRN and VGG teachers also use their stage inputs by default (WRN ``block1..block3``, VGG
  ``block1..block4``), the KDCI Table 1 protocol's choice; ``features: bn`` restores the
  reference. The digits models (``SmallCNN``) use the first conv after each max pool;
- views are made with ``affine_grid``/``grid_sample`` (kornia in the reference): the global view
  is an integer shift with zero fill (= ``RandomCrop(padding)``), the local view a bilinear
  random resized crop (scale ``[local_scale, 1]``, ratio ``[3/4, 4/3]``, clamped to the image
  rather than re-drawn);
- the generator is a fresh copy per round, re-initialised from the method's seeded RNG (the
  reference re-initialises one module with the global RNG), and DDP-wrapped per round, so under
  several ranks every rank starts from rank 0's initialisation and gradients are averaged; the
  head is wrapped once. The memory bank and pool stay per rank (each rank its own data);
- the memory bank is a circular buffer on the method's device that grows to ``bank_size`` (the
  reference preallocates random rows on the CPU and copies to the GPU every step); negatives are
  drawn without replacement from the filled rows;
- the BN loss is that of the global view (as in the reference, where the hooks' value is read
  before the local forward); the local forward's BN terms are discarded;
- the pool keeps uint8 images (the reference writes PNGs) and the student-side augmentation is
  ``pool.augment`` (reflect-padded shift + flip; the reference's CIFAR transform zero-pads);
- the KD temperature is an explicit setting (``--T 20`` in the reference scripts);
- KDCI's default dictionary size is K = 32 (``substitution.default_clusters``), the KDCI
  paper's value for model inversion (DESIGN: 8 for GAN generators, 32 for model inversion, 128
  for sampling).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdci_ray.data.labeled import to_device
from kdci_ray.methods.base import Method, MethodContext, SubstitutionData
from kdci_ray.methods.bn_statistics import (
    bn_inputs,
    bn_statistics,
    feature_dim,
    instance_means,
    stage_inputs,
)
from kdci_ray.methods.generators import DatafreeGenerator, dcgan_reset_
from kdci_ray.methods.inversion import (
    decision_adversarial,
    resized_crop,
    shift_flip,
    to_pool_images,
)
from kdci_ray.methods.pool import ImagePool


@dataclass
class CMIConfig:
    """Paper defaults for CIFAR-10 (zju-vipa/CMI ``scripts/cmi_cifar10.sh`` and the CMI setup of
    ``datafree_kd.py``: nz 256, ngf 64, bank 40960, 4096 negatives, head dim 256, ResNet-34
    features from ``layer1..layer4``'s inputs)."""

    latent_dim: int = 256  # nz
    width: int = 64  # ngf
    batch_size: int = 256  # synthesis batch (= the KD batch in the scripts)
    g_steps: int = 200  # generator + latent steps per round
    lr_g: float = 1e-3  # Adam for generator + latent (betas 0.5, 0.999) and head (0.9, 0.999)
    bn_weight: float = 1.0  # BN-statistics matching (reference --bn)
    onehot_weight: float = 1.0  # cross-entropy to the sampled targets (--oh)
    adversarial_weight: float = 0.5  # decision-adversarial term (--adv)
    contrastive_weight: float = 0.8  # contrastive term, paper Eq. 9 (--cr)
    cr_temperature: float = 0.2  # --cr_T
    features: str = "stages"  # contrastive features: stages (stage inputs) | bn (every BN input)
    head_dim: int = 256
    bank_size: int = 40960  # memory bank rows (features of earlier rounds)
    n_neg: int = 4096  # negatives drawn from the bank per step
    view_pad: int = 4  # global view: RandomCrop padding
    view_flip: bool = True
    local_scale: float = 0.25  # local view: smallest crop area share
    pool_size: int = 60_000  # images kept for the student (the reference keeps all)
    augment_pad: int = 4  # student-side random translation, pixels
    augment_flip: bool = True
    kd_temperature: float = 20.0


# ----------------------------------------------------------------------------- CMI pieces

class MLPHead(nn.Module):
    """Projection head of CMI: linear -> ReLU -> linear -> L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int, dim_hidden: int | None = None) -> None:
        super().__init__()
        hidden = dim_hidden or dim_in
        self.head = nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, dim_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(x), dim=1, p=2)


class FeatureBank:
    """Bounded circular buffer of feature rows kept on one device (grows up to ``capacity``)."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        if capacity < 1:
            raise ValueError(f"bank size must be >= 1, got {capacity}")
        self.capacity, self.device = capacity, device
        self.data: Tensor | None = None
        self.ptr = 0  # next row to overwrite once full

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def add(self, feats: Tensor) -> None:
        feats = feats.detach().to(self.device)[-self.capacity:]
        if self.data is None:
            self.data = feats.new_empty((0, feats.shape[1]))
        room = self.capacity - len(self.data)
        if room > 0:
            self.data = torch.cat([self.data, feats[:room]])
            feats = feats[room:]
        if len(feats):
            idx = (self.ptr + torch.arange(len(feats), device=self.device)) % self.capacity
            self.data[idx] = feats
            self.ptr = (self.ptr + len(feats)) % self.capacity

    def sample(self, k: int, rng: torch.Generator) -> Tensor | None:
        """Up to ``k`` distinct rows, or None while empty."""
        if self.data is None or len(self.data) == 0:
            return None
        idx = torch.randperm(len(self.data), generator=rng)[:k]
        return self.data[to_device(idx, self.device)]

    def load_state_dict(self, state: dict) -> None:
        """Rows and write pointer from a checkpoint (read onto the CPU), back on the device."""
        data = state["data"]
        self.data = None if data is None else data.to(self.device)
        self.ptr = int(state["ptr"])


# ----------------------------------------------------------------------------- the method


class CMI(Method):
    name = "cmi"
    Config = CMIConfig
    # model inversion (KDCI paper / DESIGN: K = 32 for model inversion)
    substitution = SubstitutionData("generated", default_clusters=32)
    conditional = True
    # Embedded scale (16x16 digits, ~70 s on one CPU core, test accuracy ~0.92): the reference's
    # loss weights, contrastive temperature and KD temperature, with a smaller generator, batch,
    # head and bank, and 10 instead of 200 steps per round, so lr_g is 1e-2 (1e-3 reached 0.84);
    # digits are not flip-invariant, so no flips; 2-pixel shifts on 16x16 images. Features: the
    # digits teacher's stage inputs (96-d); seed 0 reached 0.904 with them and 0.909 with every
    # BN input (320-d, features: bn), within the seed spread.
    PRESETS = {
        "embedded": {
            "cmi.latent_dim": 64, "cmi.width": 32, "cmi.batch_size": 128, "cmi.g_steps": 10,
            "cmi.lr_g": 1e-2, "cmi.head_dim": 64, "cmi.bank_size": 4096, "cmi.n_neg": 512,
            "cmi.view_pad": 2, "cmi.view_flip": False, "cmi.local_scale": 0.25,
            "cmi.augment_pad": 1, "cmi.augment_flip": False,
            "train.rounds": 16, "train.kd_steps": 25, "train.batch_size": 128,
            "train.lr": 0.05, "train.eval_every": 4,
        }
    }
    SMOKE = {"latent_dim": 16, "width": 8, "batch_size": 16, "g_steps": 2, "head_dim": 16,
             "bank_size": 64, "n_neg": 32}

    def __init__(self, cfg: CMIConfig, ctx: MethodContext) -> None:
        super().__init__(cfg, ctx)
        # the template only fixes the architecture; every round re-initialises a copy of it
        self.template = DatafreeGenerator(cfg.latent_dim, ctx.image_size, ctx.channels,
                                          cfg.width).to(ctx.device)
        if not bn_inputs(ctx.teacher):
            raise ValueError("CMI needs a teacher with BatchNorm2d layers (BN statistics)")
        if cfg.features not in ("stages", "bn"):
            raise ValueError(f"cmi.features must be stages or bn, got {cfg.features!r}")
        pick = stage_inputs if cfg.features == "stages" else bn_inputs
        self.feature_modules = pick(ctx.teacher)
        dim = feature_dim(ctx.teacher, self.feature_modules, ctx.channels, ctx.image_size)
        self.head = MLPHead(dim, cfg.head_dim).to(ctx.device)
        self.head_ddp = ctx.wrap(self.head)
        self.head_optimizer = torch.optim.Adam(self.head.parameters(), lr=cfg.lr_g,
                                               betas=(0.9, 0.999))
        self.bank = FeatureBank(cfg.bank_size, ctx.device)  # rows: [local | global] features
        self.pool = ImagePool(cfg.pool_size, ctx.device)

    def _contrastive(self, local: Tensor, glob: Tensor) -> Tensor:
        """InfoNCE of local views against (detached) global views, bank rows as negatives."""
        b = local.shape[0]
        cached = self.bank.sample(self.cfg.n_neg, self.rng)
        if cached is not None:
            cached_local, cached_global = cached.chunk(2, dim=1)
            local = torch.cat([local, cached_local])
            glob = torch.cat([glob, cached_global])
        proj = self.head_ddp(torch.cat([local, glob]))
        proj_local, proj_global = proj.chunk(2, dim=0)
        logits = proj_local @ proj_global.detach().T / self.cfg.cr_temperature
        labels = torch.arange(len(logits), device=logits.device)
        per_row = F.cross_entropy(logits, labels, reduction="none")
        if cached is None:
            return per_row.mean()
        # split the mean so the current batch's gradient is not diluted by the negatives
        return per_row[:b].mean() + per_row[b:].mean()

    def synthesize(self, round_idx: int) -> dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        gen = copy.deepcopy(self.template)
        dcgan_reset_(gen, self.rng)
        gen.train()
        gen_ddp = ctx.wrap(gen)
        z = torch.randn(cfg.batch_size, cfg.latent_dim, generator=self.rng).to(ctx.device)
        z.requires_grad_(True)
        targets = self.sample_targets(cfg.batch_size).sort().values.to(ctx.device)
        opt = torch.optim.Adam([{"params": gen.parameters()}, {"params": [z]}], lr=cfg.lr_g,
                               betas=(0.5, 0.999))
        student_was_training = ctx.student.training
        ctx.student.eval()
        best_loss, best_images, best_feats, logs = math.inf, None, None, {}
        features = instance_means(ctx.teacher, self.feature_modules)
        with bn_statistics(ctx.teacher) as bn_stats, features as feats:
            for _ in range(cfg.g_steps):
                images = gen_ddp(z)
                global_view = ctx.normalize(shift_flip(images, self.rng, cfg.view_pad,
                                                       cfg.view_flip))
                local_view = ctx.normalize(resized_crop(images, self.rng, cfg.local_scale,
                                                        cfg.view_flip))
                t_logits = ctx.teacher(global_view).logits
                losses = {"bn": bn_stats.pop(), "oh": F.cross_entropy(t_logits, targets)}
                global_feat = feats.features()
                ctx.teacher(local_view)
                bn_stats.pop()  # only the global view's BN statistics count
                local_feat = feats.features()
                loss = cfg.bn_weight * losses["bn"] + cfg.onehot_weight * losses["oh"]
                if cfg.adversarial_weight > 0:
                    s_logits = ctx.student(global_view).logits
                    losses["adv"] = decision_adversarial(s_logits, t_logits)
                    loss = loss + cfg.adversarial_weight * losses["adv"]
                if cfg.contrastive_weight > 0:
                    losses["cr"] = self._contrastive(local_feat, global_feat)
                    loss = loss + cfg.contrastive_weight * losses["cr"]
                losses["loss"] = loss
                if loss.item() < best_loss:
                    best_loss, best_images = loss.item(), images.detach().clone()
                    best_feats = torch.cat([local_feat, global_feat], dim=1).detach()
                    logs = {k: float(v.detach()) for k, v in losses.items()}
                opt.zero_grad(set_to_none=True)
                self.head_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.head_optimizer.step()
        ctx.student.train(student_was_training)
        ctx.student.zero_grad(set_to_none=True)
        assert best_images is not None and best_feats is not None, "g_steps must be >= 1"
        self.bank.add(best_feats)
        stored = to_pool_images(best_images)
        self.pool.add(stored)
        self.last_batch = ctx.normalize(stored)
        return {**logs, "pool_size": float(len(self.pool)), "bank_size": float(len(self.bank))}

    def sample(self, batch_size: int) -> Tensor:
        return self.sample_pool(self.pool, batch_size)

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "head_optimizer": self.head_optimizer.state_dict(),
                "bank": self.bank.data, "bank_ptr": self.bank.ptr, "pool": self.pool.state_dict(),
                "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.bank.load_state_dict({"data": state["bank"], "ptr": state["bank_ptr"]})
        self.pool.load_state_dict(state["pool"])
        self.rng.set_state(state["rng"])
