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
