"""The CGN composition, its counterfactual labels and the texture shuffler."""

from __future__ import annotations

import pytest
import torch

from kdci_ray.cgn.composition import compose, counterfactual_labels, shuffle_texture


def test_compose_is_the_mask_weighted_mix() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.rand(4, 1, 8, 8, generator=g)
    f, b = torch.rand(4, 3, 8, 8, generator=g), torch.rand(4, 3, 8, 8, generator=g)
    x = compose(m, f, b)
    torch.testing.assert_close(x, m * f + (1 - m) * b)
    assert torch.equal(compose(torch.ones_like(m), f, b), f)
    assert torch.equal(compose(torch.zeros_like(m), f, b), b)


@pytest.mark.parametrize("shapes", [((4, 3, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8)),
                                    ((4, 1, 8, 8), (4, 3, 8, 8), (4, 3, 8, 7)),
                                    ((3, 1, 8, 8), (4, 3, 8, 8), (4, 3, 8, 8))])
def test_compose_rejects_shapes_that_do_not_fit(shapes) -> None:
    with pytest.raises(ValueError, match="must be|do not fit"):
        compose(*(torch.zeros(s) for s in shapes))


def test_counterfactual_labels_permute_texture_labels_independently() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(20)
    same_fg = same_pair = 0
    for _ in range(20):
        shape, fg, bg = counterfactual_labels(labels, g)
        assert torch.equal(shape, labels)
        # permutations: the class counts of the batch are kept
        assert torch.equal(torch.bincount(fg, minlength=10), torch.bincount(labels))
        assert torch.equal(torch.bincount(bg, minlength=10), torch.bincount(labels))
        same_fg += int((fg == labels).sum())
        same_pair += int((fg == bg).sum())
    n = 20 * len(labels)
    # independent of the shape label and of each other: agreement near chance (1/10)
    assert 0.05 < same_fg / n < 0.15 and 0.05 < same_pair / n < 0.15


def test_shuffler_keeps_texture_and_removes_layout() -> None:
    g = torch.Generator().manual_seed(0)
    flat = torch.rand(5, 3, 1, 1, generator=g).expand(5, 3, 16, 16).contiguous()
    torch.testing.assert_close(shuffle_texture(flat, g), flat)  # a flat colour stays itself
    # a centred blob (a "shape"): after shuffling, the layout no longer lines up with it
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = (((yy - 7.5) ** 2 + (xx - 7.5) ** 2) < 20).float().expand(64, 3, 16, 16)
    out = shuffle_texture(blob, g)
    assert out.shape == blob.shape
    mean_out = out.mean(0)
    corr = torch.corrcoef(torch.stack([mean_out.flatten(), blob[0].flatten()]))[0, 1]
    assert corr < 0.5  # averaged over random crops the blob's position is washed out
    assert abs(float(out.mean()) - float(blob.mean())) < 0.1  # colour mass kept
    # per-image randomness: not every image gets the same crop
    assert len({tuple(o.flatten()[:64].tolist()) for o in out}) > 1
    with pytest.raises(ValueError, match="tiles"):
        shuffle_texture(blob, g, tiles=0)
