"""The published CGN-MNIST teachers (Sauer & Geiger, ICLR 2021), loaded unchanged.

The CGN authors released one trained CGN per MNIST variant (coloured, double-coloured, Wildlife):
plain ``state_dict`` files of 57 tensors (660,462 parameters) for a 32x32, 10-class model.
:class:`CGNMnist` is our own module with exactly that architecture, its attribute names and
``nn.Sequential`` indices reproducing the checkpoints' keys, so that they load with
``load_state_dict(strict=True)``:

- ``label_emb``: ``nn.Embedding(10, 10)``; every mechanism reads ``cat([noise (B, 32),
  label_emb(y)])`` (42-d);
- ``f_shape`` (mask): Linear 42 -> 64*8*8, reshape (64, 8, 8), InstanceNorm, two upsample blocks
  (nearest x2, 3x3 conv without bias, BatchNorm2d, LeakyReLU 0.2) each followed by an
  InstanceNorm (no affine parameters, no keys), the second block ending at 1 channel; the mask is
  then clamped to [1e-4, 0.9999] (no sigmoid);
- ``f_text1`` (foreground) and ``f_text2`` (background): Linear, reshape, two upsample blocks
  (64 -> 64 -> 32 channels), 3x3 conv (with bias) to 3 channels, BatchNorm2d, tanh: [-1, 1], the
  range of the authors' data (normalised with mean 0.5, std 0.5 per channel).

Composition: ``x = m * shuffle(f) + (1 - m) * shuffle(b)`` with the shuffler of
:func:`kdci_ray.cgn.composition.shuffle_texture` (tile 2x2, random 32x32 crop per image).

:func:`load_cgn_mnist` reads a file strictly (one clear error naming the file, the missing,
unexpected and mis-shaped keys, and the fix), optionally after :func:`verify_sha256`.
:func:`published_teacher` wraps a loaded model in the interface the SKDCGN black box reads from
:class:`kdci_ray.cgn.mechanisms.CGN` (textures mapped to [0, 1], the pipeline's range). Nothing
here reads the published files from a fixed place: the caller passes the path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kdci_ray.cgn.composition import counterfactual_labels
from kdci_ray.cgn.mechanisms import CHANNELS, MECHANISMS, Composite, compose_mechanisms

NUM_CLASSES = 10
LATENT_DIM = 32
IMAGE_SIZE = 32
NGF = 32
MASK_MIN, MASK_MAX = 1e-4, 0.9999
# our mechanism names -> the checkpoint's attribute names
SEQUENTIALS = {"shape": "f_shape", "foreground": "f_text1", "background": "f_text2"}
# the authors' files (see their repository, mnists/experiments/cgn_<variant>/weights/ckp.pth)
PUBLISHED_SHA256 = {
    "cgn_colored_MNIST.pth":
        "6b178e7c1924b9efc532c467e7f0b77d2702efb536de9816bbd7e92c26d9b3fe",
    "cgn_double_colored_MNIST.pth":
        "7aa06c907f099c63a26127164a38d2ab353f1cdcafabdf8ca9303a0e9197b933",
    "cgn_wildlife_MNIST.pth":
        "db5bc3108f7bfbd74a85e2b267e65e95bd918920a02fd8de64c947fd8a0015f0",
}
_FIX = ("pass one of the published CGN-MNIST teachers (" + ", ".join(PUBLISHED_SHA256) +
        "): a plain state_dict of 57 tensors, saved with torch.save(model.state_dict()) and read "
        "with torch.load(path, weights_only=True)")


class Reshape(nn.Module):
    """``(B, C*H*W) -> (B, C, H, W)`` (no parameters)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.view(len(x), *self.shape)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.shape))


def upsample_block(cin: int, cout: int) -> list[nn.Module]:
    """Nearest x2 upsampling, 3x3 conv without bias, BatchNorm2d, LeakyReLU 0.2."""
    return [nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]


def _instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def shape_layers(cin: int, ngf: int = NGF, init: int = IMAGE_SIZE // 4) -> nn.Sequential:
    """The mask mechanism's body (indices 0..12; the clamp is applied by the caller)."""
    return nn.Sequential(
        nn.Linear(cin, 2 * ngf * init ** 2), Reshape(2 * ngf, init, init), _instance_norm(2 * ngf),
        *upsample_block(2 * ngf, ngf), _instance_norm(ngf),
        *upsample_block(ngf, 1), _instance_norm(1))


def texture_layers(cin: int, ngf: int = NGF, init: int = IMAGE_SIZE // 4) -> nn.Sequential:
    """A texture mechanism (indices 0..12), tanh output in [-1, 1]."""
    return nn.Sequential(
        nn.Linear(cin, 2 * ngf * init ** 2), Reshape(2 * ngf, init, init),
        *upsample_block(2 * ngf, 2 * ngf), *upsample_block(2 * ngf, ngf),
        nn.Conv2d(ngf, 3, 3, stride=1, padding=1), nn.BatchNorm2d(3), nn.Tanh())


class CGNMnist(nn.Module):
    """The authors' CGN for 32x32 MNIST variants; its ``state_dict`` keys are the published ones.

    ``mechanism(name, noise, labels)``: one mechanism's output, textures *before* the shuffler
    (mask (B, 1, 32, 32) in [1e-4, 0.9999], textures (B, 3, 32, 32) in [-1, 1]).
    ``compose(noise, labels, generator)`` / ``sample(labels, generator)``: composed images in
    [-1, 1] (``forward`` is ``sample``). Put it in eval mode (BatchNorm running statistics) for
    the teacher's answers; :func:`load_cgn_mnist` returns it so.
    """

    def __init__(self) -> None:
        super().__init__()
        self.latent_dim, self.num_classes, self.image_size = LATENT_DIM, NUM_CLASSES, IMAGE_SIZE
        cin = LATENT_DIM + NUM_CLASSES
        self.label_emb = nn.Embedding(NUM_CLASSES, NUM_CLASSES)
        self.f_shape = shape_layers(cin)
        self.f_text1 = texture_layers(cin)
        self.f_text2 = texture_layers(cin)

    def inputs(self, noise: Tensor, labels: Tensor) -> Tensor:
        """The 42-d mechanism input: ``cat([noise (B, 32), label_emb(labels) (B, 10)])``."""
        if noise.dim() != 2 or noise.shape[1] != LATENT_DIM or len(noise) != len(labels):
            raise ValueError(f"noise must be (B, {LATENT_DIM}) with B = len(labels) = "
                             f"{len(labels)}, got {tuple(noise.shape)}")
        return torch.cat([noise, self.label_emb(labels)], dim=1)

    def mechanism(self, name: str, noise: Tensor, labels: Tensor) -> Tensor:
        if name not in SEQUENTIALS:
            raise ValueError(f"unknown mechanism {name!r}: one of {', '.join(SEQUENTIALS)}")
        out = getattr(self, SEQUENTIALS[name])(self.inputs(noise, labels))
        return out.clamp(MASK_MIN, MASK_MAX) if name == "shape" else out

    def compose(self, noise: dict[str, Tensor], labels: dict[str, Tensor],
                generator: torch.Generator | None = None) -> Composite:
        """Per-mechanism ``noise`` and ``labels`` (dicts keyed by mechanism) -> the composite
        (image in [-1, 1]); with ``generator`` the textures pass through the shuffler."""
        return compose_mechanisms(self.mechanism, noise, labels, generator)

    def sample(self, labels: Tensor, generator: torch.Generator,
               counterfactual: bool = False) -> Composite:
        """Each mechanism with its own ``N(0, I)`` noise from ``generator``; with
        ``counterfactual`` the foreground and background labels are two independent permutations
        of ``labels`` (the shape keeps them); textures shuffled."""
        if counterfactual:
            ys = dict(zip(MECHANISMS, counterfactual_labels(labels, generator), strict=True))
        else:
            ys = dict.fromkeys(MECHANISMS, labels)
        device = self.label_emb.weight.device
        noise = {m: torch.randn(len(labels), LATENT_DIM, generator=generator).to(device)
                 for m in MECHANISMS}
        return self.compose(noise, {m: y.to(device) for m, y in ys.items()}, generator)

    forward = sample


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Refuse ``path`` unless its SHA-256 is ``expected`` (hex, case-insensitive)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CGN-MNIST checkpoint not found: {path}; {_FIX}")
    actual = sha256_of(path)
    if actual != expected.strip().lower():
        raise ValueError(f"{path}: SHA-256 {actual} does not match the expected "
                         f"{expected.strip().lower()}: the file is damaged or another release; "
                         f"copy it again from the source (published checksums: "
                         f"kdci_ray.cgn.cgn_mnist.PUBLISHED_SHA256)")


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(state: Mapping[str, object], where: str = "the state dict") -> None:
    """One ``ValueError`` naming every missing, unexpected and mis-shaped key, unless ``state``
    has exactly :class:`CGNMnist`'s keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in CGNMnist().state_dict().items()}
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"  # type: ignore
                       for k in set(expected) & set(state)
                       if isinstance(state[k], Tensor) and tuple(state[k].shape) != expected[k])
    if not (missing or unexpected or misshaped or not_tensors):
        return
    lines = [f"{where} is not a CGN-MNIST state dict (strict loading: every key and shape must "
             f"match the published architecture, {len(expected)} tensors):"]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("mis-shaped keys", misshaped), ("entries that are not tensors",
                                                         not_tensors)):
        if keys:
            lines.append(f"  {label} ({len(keys)}): {_listing(keys)}")
    prefixes = {k.split(".", 1)[0] for k in unexpected}
    if unexpected and len(prefixes) == 1 and all(
            k.split(".", 1)[-1] in expected for k in unexpected):
        lines.append(f"  every key carries the prefix '{prefixes.pop()}.': save the inner model's "
                     f"state_dict instead")
    lines.append(f"Fix: {_FIX}.")
    raise ValueError("\n".join(lines))


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A checkpoint file's tensors (``torch.load(weights_only=True)``, on the CPU), or one clear
    ``FileNotFoundError`` / ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CGN-MNIST checkpoint not found: {path}; {_FIX}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and tensor-storage errors alike
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{path} is not a readable PyTorch state dict ({type(exc).__name__}: "
                         f"{reason[:200]}); {_FIX}") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict; {_FIX}")
    inner = [k for k, v in state.items() if isinstance(v, Mapping)]
    if inner and len(state) == 1:
        raise ValueError(f"{path} wraps its state dict in the key {inner[0]!r}; save "
                         f"checkpoint[{inner[0]!r}] on its own; {_FIX}")
    return dict(state)


def load_cgn_mnist(path: str | Path, sha256: str | None = None,
                   device: str | torch.device = "cpu") -> CGNMnist:
    """The published CGN-MNIST teacher at ``path`` (strictly loaded, eval mode); with ``sha256``
    the file must have that checksum first."""
    if sha256 is not None:
        verify_sha256(path, sha256)
    state = read_state_dict(path)
    check_state_dict(state, str(path))
    model = CGNMnist()
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


class _Output(nn.Module):
    """A mechanism's last step in the pipeline's range: the mask's clamp, or a texture's
    ``[-1, 1] -> [0, 1]`` (the authors' mean 0.5 / std 0.5 normalisation undone)."""

    def __init__(self, out_channels: int, unit_range: bool) -> None:
        super().__init__()
        self.out_channels, self.unit_range = out_channels, unit_range

    def forward(self, x: Tensor) -> Tensor:
        if self.out_channels == 1:
            return x.clamp(MASK_MIN, MASK_MAX)
        return (x + 1.0) * 0.5 if self.unit_range else x


class PublishedMechanism(nn.Module):
    """One mechanism of a :class:`CGNMnist` as ``(noise, labels) -> output``, sharing its weights
    (``latent_dim``, ``num_classes``, ``init`` and ``net[-1].out_channels`` as on
    :class:`kdci_ray.cgn.mechanisms.MechanismGenerator`)."""

    def __init__(self, cgn: CGNMnist, name: str, unit_range: bool) -> None:
        super().__init__()
        self.latent_dim, self.num_classes, self.init = LATENT_DIM, NUM_CLASSES, IMAGE_SIZE // 4
        self.embed = cgn.label_emb
        self.net = nn.Sequential(getattr(cgn, SEQUENTIALS[name]),
                                 _Output(CHANNELS[name], unit_range))

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        return self.net(torch.cat([noise, self.embed(labels)], dim=1))


class PublishedTeacher(nn.Module):
    """A loaded :class:`CGNMnist` in the interface of :class:`kdci_ray.cgn.mechanisms.CGN` that
    :class:`kdci_ray.cgn.blackbox.BlackBoxCGN` and the pipeline read (``mechanisms``,
    ``mechanism(name, noise, labels)``): 32x32 answers, textures in [0, 1] by default (the
    16x16 pipeline's range; ``unit_range=False`` keeps the model's [-1, 1])."""

    def __init__(self, cgn: CGNMnist, unit_range: bool = True) -> None:
        super().__init__()
        self.cgn = cgn
        self.latent_dim = LATENT_DIM
        self.mechanisms = nn.ModuleDict({m: PublishedMechanism(cgn, m, unit_range)
                                         for m in MECHANISMS})

    def mechanism(self, name: str, noise: Tensor, labels: Tensor) -> Tensor:
        if name not in self.mechanisms:
            raise ValueError(f"unknown mechanism {name!r}: one of {', '.join(MECHANISMS)}")
        return self.mechanisms[name](noise, labels)


def published_teacher(path: str | Path, sha256: str | None = None,
                      unit_range: bool = True) -> PublishedTeacher:
    """:func:`load_cgn_mnist` wrapped for ``BlackBoxCGN(published_teacher(path))``."""
    return PublishedTeacher(load_cgn_mnist(path, sha256), unit_range).eval()
