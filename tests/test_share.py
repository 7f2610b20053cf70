"""Weight sharing: exact clusters on hand-computable weights, at most 2**bits distinct values."""
import torch

from compression.share import init_centroids, kmeans_1d, share_layer


def test_kmeans_finds_obvious_clusters():
    values = torch.tensor([-1.0, -1.1, -0.9, 2.0, 2.1, 1.9])
    centroids, assign = kmeans_1d(values, 2)
    assert torch.allclose(centroids, torch.tensor([-1.0, 2.0]))
    assert assign.tolist() == [0, 0, 0, 1, 1, 1]


def test_linear_init_skips_the_pruned_gap_and_keeps_extremes():
    values = torch.tensor([-0.9, -0.5, 0.5, 0.6, 0.7, 0.9])
    c = init_centroids(values, 4, "linear")
    assert c.min() == -0.9 and c.max() == 0.9
    assert not ((c > -0.5) & (c < 0.5)).any()


def test_share_layer_limits_distinct_values_and_keeps_zeros():
    torch.manual_seed(0)
    w = torch.randn(50, 40)
    mask = w.abs() > 0.5
    w = w * mask
    for bits in (1, 2, 3, 5):
        centroids, assign, _ = share_layer(w, mask, bits, "linear", 30)
        shared = torch.where(mask, centroids[assign], torch.zeros_like(w))
        distinct = torch.unique(shared[shared != 0]).numel()
        assert distinct <= 2 ** bits
        assert (shared[~mask] == 0).all()
        # every survivor went to its nearest centroid
        d = (w[mask].unsqueeze(1) - centroids.unsqueeze(0)).abs()
        assert torch.equal(d.argmin(1), assign[mask]) or torch.allclose(
            d.min(1).values, (w[mask] - centroids[assign[mask]]).abs())


def test_density_and_random_init_run():
    values = torch.randn(1000)
    for method in ("density", "random"):
        c, a = kmeans_1d(values, 8, init=method, generator=torch.Generator().manual_seed(0))
        assert 1 <= c.numel() <= 8 and a.max() < c.numel()


def test_kmeans_plusplus_fills_an_8_bit_codebook_where_linear_leaves_it_empty():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 256, generator=g) * 0.05     # a pretrained layer's bell shape
    w[0, 0] = 1.0                                        # ... with one outlier
    linear, _, _ = share_layer(w, None, 8, "linear", 30)
    plusplus, assign, _ = share_layer(w, None, 8, "kmeans++", 30, torch.Generator().manual_seed(1))
    used = torch.unique(plusplus[assign]).numel()
    assert linear.numel() < 200 and used > 240        # linear merges empty clusters away
    err = lambda c, a: float(((c[a] - w) ** 2).mean())  # noqa: E731
    _, lin_assign = kmeans_1d(w.flatten(), 256, init="linear")
    assert err(plusplus, assign) < err(linear, lin_assign.view_as(w))


def test_sensitivity_pulls_centroids_to_the_weights_that_matter():
    from compression.share import share_grouped

    w = torch.tensor([[0.0, 0.1, 0.2, 1.0]])
    heavy = torch.tensor([[1.0, 1.0, 1.0, 1000.0]])
    c, a, _ = share_grouped(w, None, 1, init="linear", iterations=30, sensitivity=heavy)
    assert torch.isclose(c[a][0, 3], torch.tensor(1.0))      # the sensitive weight is exact
    c, a, _ = share_grouped(w, None, 1, init="linear", iterations=30)
    assert not torch.isclose(c[a][0, 3], torch.tensor(1.0)) or torch.isclose(c[a][0, 0], torch.tensor(0.1))


def test_grouped_codebooks_stay_in_their_rows_and_beat_one_codebook():
    from compression._state import LayerState
    from compression.share import share_grouped

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.01, 0.01, 1.0, 1.0]).repeat_interleave(4)[:, None]
    w = torch.randn(16, 32, generator=g) * scale          # rows of very different scales
    mask = torch.rand(16, 32, generator=g) > 0.3
    c, a, _ = share_grouped(w, mask, 2, init="kmeans++", iterations=30, group_size=4,
                            generator=torch.Generator().manual_seed(0))
    assert c.numel() == 4 * 4
    layer = LayerState(torch.nn.Linear(32, 16), "Linear", mask=mask, centroids=c,
                       assignments=a, bits=2, group_size=4)
    layer.module.weight.data.copy_(w)
    layer.enforce()
    assert layer.grouped_ok()
    shared = layer.weight.detach()
    for rows in range(0, 16, 4):
        assert torch.unique(shared[rows:rows + 4][mask[rows:rows + 4]]).numel() <= 4
    one, a1, _ = share_grouped(w, mask, 2, init="kmeans++", iterations=30,
                               generator=torch.Generator().manual_seed(0))
    per_tensor = torch.where(mask, one[a1], torch.zeros_like(w))
    err = lambda x, rows: float(((x - w)[rows][mask[rows]] ** 2).sum())  # noqa: E731
    small = slice(0, 8)     # the small rows: one codebook spends nothing on them
    assert err(shared, small) < 0.05 * err(per_tensor, small)
    assert err(shared, slice(0, 16)) <= err(per_tensor, slice(0, 16))


def test_compensated_assignments_keep_the_layers_outputs_closer():
    from compression.share import compensated_assignments, share_grouped

    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 120, generator=g)
    x = torch.randn(800, 120, generator=g) @ torch.randn(120, 120, generator=g) * 0.1
    h = x.T @ x / 800
    mask = torch.rand(32, 120, generator=g) > 0.25
    c, a, _ = share_grouped(w, mask, 3, init="kmeans++", iterations=20, group_size=8,
                            generator=torch.Generator().manual_seed(0))
    a2 = compensated_assignments(w, mask, c, 3, 8, h)
    plain = torch.where(mask, c[a], torch.zeros_like(w))
    comp = torch.where(mask, c[a2], torch.zeros_like(w))
    out_err = lambda q: float(((x @ (q - w).T) ** 2).mean())  # noqa: E731
    assert out_err(comp) < 0.8 * out_err(plain)     # the cut and the rounding both compensated
    rows = torch.arange(32)[:, None] // 8
    assert bool(((a2 // 8) == rows)[mask].all())      # still its own rows' codebook
