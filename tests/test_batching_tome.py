"""Token merging inside step batches: diffserve's fixed-pattern matching (engine/controls/tome.py) answers
exactly what tomesd's own matching answers -- the merged tokens, the unmerged tokens, bit for bit -- for
batches of rows with their own tokens, odd sizes whose strides do not divide the image, and any ratio; and the
installed matching leaves tomesd's random pattern to tomesd. Compared against tomesd's own function even when a
model in this test process installed ours in its place already."""

from __future__ import annotations

import pytest
import torch

from diffserve.engine.controls.tome import fixed_matching, install_fixed_matching


def tomesd_own(merge_module):
    """tomesd's own matching function, whether or not a model in this process installed ours in its place."""
    current = merge_module.bipartite_soft_matching_random2d
    return getattr(current, "tomesd_original", current)


@pytest.mark.parametrize(("batch", "w", "h", "r"), [(16, 16, 16, 128), (2, 16, 16, 128), (3, 8, 8, 32),
                                                     (4, 9, 7, 20), (5, 12, 10, 200), (1, 4, 4, 0)])
def test_fixed_matching_is_tomesds_bit_for_bit(batch, w, h, r):
    from tomesd import merge as tomesd_merge

    gen = torch.Generator().manual_seed(batch * 100 + w)
    metric = torch.randn(batch, w * h, 24, generator=gen)
    x = torch.randn(batch, w * h, 24, generator=gen)
    ours = fixed_matching(metric, w, h, 2, 2, r)
    theirs = tomesd_own(tomesd_merge)(metric, w, h, 2, 2, r, no_rand=True)
    merged = ours[0](x)
    assert torch.equal(merged, theirs[0](x))
    if r > 0:
        assert merged.shape[1] < w * h  # tokens really merged
    y = torch.randn(merged.shape, generator=gen)
    assert torch.equal(ours[1](y), theirs[1](y))


def test_the_installed_matching_keeps_tomesds_random_pattern(monkeypatch):
    from tomesd import merge as tomesd_merge

    original = tomesd_own(tomesd_merge)  # an earlier test in this process may have installed ours already
    monkeypatch.setattr(tomesd_merge, "bipartite_soft_matching_random2d", original)  # restored after the test
    install_fixed_matching(tomesd_merge)
    install_fixed_matching(tomesd_merge)  # idempotent
    installed = tomesd_merge.bipartite_soft_matching_random2d
    assert installed is not original and installed.diffserve_fixed
    metric = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 64, 8)
    mine = installed(metric, 8, 8, 2, 2, 16, no_rand=False, generator=torch.Generator().manual_seed(5))
    theirs = original(metric, 8, 8, 2, 2, 16, no_rand=False, generator=torch.Generator().manual_seed(5))
    assert torch.equal(mine[0](x), theirs[0](x))
