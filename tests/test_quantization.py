"""Balanced / plain residual k-means (torch, and faiss's for plain), collision resolution and codebook statistics."""

import pytest
import torch

from tests.conftest import clustered_embeddings
from tokenization_semantic_id.collisions import collision_rate, default_disambiguation_size, resolve_collisions
from tokenization_semantic_id.quantization import (
    ResidualKMeansConfig,
    balanced_capacities,
    balanced_kmeans,
    faiss_kmeans,
    fit_residual_kmeans,
    kmeans,
    nearest_centroid,
    quantize_with_codebooks,
)
from tokenization_semantic_id.statistics import codebook_report, plot_codebook_report


def reference_balanced_kmeans(points, num_clusters, sweeps, seed):
    """Algorithm 1 written as literally as possible (Python loops): the fast path must match it."""
    generator = torch.Generator().manual_seed(seed)
    centroids = points[torch.randperm(points.shape[0], generator=generator)[:num_clusters]].clone()
    capacities = balanced_capacities(points.shape[0], num_clusters).tolist()
    for _ in range(sweeps):
        unassigned = list(range(points.shape[0]))
        assignment = [-1] * points.shape[0]
        for k in range(num_clusters):
            unassigned.sort(key=lambda i: float(((points[i] - centroids[k]) ** 2).sum()))
            members, unassigned = unassigned[: capacities[k]], unassigned[capacities[k] :]
            for i in members:
                assignment[i] = k
            centroids[k] = points[members].mean(dim=0)
    return centroids, torch.tensor(assignment)


@pytest.mark.parametrize("block_size", [256, 3, 1])  # one block; blocks that shrink the candidate set as they go
def test_balanced_kmeans_matches_reference_algorithm(block_size):
    points = clustered_embeddings(53, dim=5, seed=3).double()
    for sweeps in (1, 3):
        fast = balanced_kmeans(points, 7, max_iterations=sweeps, seed=11, block_size=block_size)
        centroids, assignment = reference_balanced_kmeans(points, 7, fast.iterations, seed=11)
        assert torch.equal(fast.assignment, assignment)
        assert torch.allclose(fast.centroids, centroids)


@pytest.mark.parametrize("num_points,num_clusters", [(60, 6), (61, 6), (10, 3), (8, 8)])
def test_balanced_cluster_sizes_are_floor_or_ceil(num_points, num_clusters):
    points = torch.randn(num_points, 4, generator=torch.Generator().manual_seed(0))
    result = balanced_kmeans(points, num_clusters, seed=0)
    sizes = torch.bincount(result.assignment, minlength=num_clusters)
    base, remainder = divmod(num_points, num_clusters)
    assert sizes.sum() == num_points
    assert sorted(sizes.tolist()) == sorted([base + 1] * remainder + [base] * (num_clusters - remainder))
    # the first N mod K clusters (processing order) take the extra item
    assert sizes[:remainder].tolist() == [base + 1] * remainder


def test_balanced_kmeans_recovers_separated_equal_blobs_and_is_deterministic():
    centres = torch.tensor([[10.0, 0], [-10, 0], [0, 10], [0, -10]])
    points = centres.repeat_interleave(25, dim=0) + 0.1 * torch.randn(
        100, 2, generator=torch.Generator().manual_seed(1)
    )
    first = balanced_kmeans(points, 4, seed=5)
    second = balanced_kmeans(points, 4, seed=5)
    assert torch.equal(first.assignment, second.assignment)
    assert first.converged
    for blob in range(4):  # each blob is exactly one cluster
        assert first.assignment[blob * 25 : (blob + 1) * 25].unique().numel() == 1
    assert first.assignment.unique().numel() == 4


def test_plain_kmeans_is_unbalanced_where_balanced_is_not():
    generator = torch.Generator().manual_seed(2)
    points = torch.cat([torch.randn(90, 2, generator=generator), torch.randn(10, 2, generator=generator) + 20])
    plain = kmeans(points, 2, seed=0)
    balanced = balanced_kmeans(points, 2, seed=0)
    assert sorted(torch.bincount(plain.assignment, minlength=2).tolist()) == [10, 90]
    assert torch.bincount(balanced.assignment, minlength=2).tolist() == [50, 50]


def test_sampled_balanced_kmeans_fits_on_a_sample_then_balances_every_item():
    centres = 20 * torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    points = centres.repeat_interleave(50, dim=0) + 0.1 * torch.randn(
        400, 4, generator=torch.Generator().manual_seed(1)
    )
    sampled = balanced_kmeans(points, 8, seed=3, max_points_per_centroid=5)  # centroids fitted on 40 of 400 items
    assert 1 <= sampled.sample_iterations < sampled.iterations <= sampled.sample_iterations + 3
    assert len(sampled.changed_fraction) == sampled.iterations - 2  # no change is measured on each phase's first sweep
    assert torch.bincount(sampled.assignment, minlength=8).tolist() == [50] * 8
    for blob in range(8):  # the sample's centroids lead the full sweeps to the same blobs
        assert sampled.assignment[blob * 50 : (blob + 1) * 50].unique().numel() == 1
    again = balanced_kmeans(points, 8, seed=3, max_points_per_centroid=5)
    assert torch.equal(sampled.assignment, again.assignment)
    # a sample at least as large as the catalogue is no sample: the result is Algorithm 1 on all items
    whole = balanced_kmeans(points, 8, seed=3, max_points_per_centroid=50)
    unsampled = balanced_kmeans(points, 8, seed=3)
    assert whole.sample_iterations == 0
    assert torch.equal(whole.assignment, unsampled.assignment)
    assert torch.equal(whole.centroids, unsampled.centroids)


def test_faiss_kmeans_is_seeded_and_codes_are_nearest_centroids():
    points = clustered_embeddings(400, dim=6, seed=2)
    result = faiss_kmeans(points, 16, max_iterations=10, seed=1)
    assert torch.equal(result.assignment, nearest_centroid(points, result.centroids))
    assert 1 <= result.iterations <= 10 and isinstance(result.converged, bool)
    assert torch.equal(faiss_kmeans(points, 16, max_iterations=10, seed=1).centroids, result.centroids)
    # through the residual fit: plain codes are nearest-centroid codes, so re-quantising reproduces them
    config = ResidualKMeansConfig(num_levels=2, codebook_size=8, balanced=False, backend="faiss")
    fit = fit_residual_kmeans(points, config, progress=False)
    assert torch.equal(quantize_with_codebooks(points, fit.codebooks), fit.codes)


@pytest.mark.parametrize("clusterer", [balanced_kmeans, kmeans, faiss_kmeans])
def test_bad_clustering_input(clusterer):
    with pytest.raises(ValueError, match="larger than the catalogue"):
        clusterer(torch.randn(5, 3), 8)
    with pytest.raises(ValueError, match="empty catalogue"):
        clusterer(torch.zeros(0, 3), 2)
    with pytest.raises(ValueError, match="2-D"):
        clusterer(torch.randn(5), 2)


def test_residual_levels_shrink_residual_and_quantize_plain_codes_exactly():
    embeddings = clustered_embeddings(300, dim=8)
    config = ResidualKMeansConfig(num_levels=3, codebook_size=[8, 6, 4], balanced=False, seed=1)
    fit = fit_residual_kmeans(embeddings, config, progress=False)
    assert fit.codes.shape == (300, 3)
    assert [c.shape[0] for c in fit.codebooks] == [8, 6, 4]
    assert all(a > b for a, b in zip(fit.residual_norm, fit.residual_norm[1:]))
    # plain k-means codes are nearest-centroid codes: re-quantising the catalogue reproduces them
    assert torch.equal(quantize_with_codebooks(embeddings, fit.codebooks), fit.codes)


def test_config_validation():
    with pytest.raises(ValueError, match="one size per level"):
        ResidualKMeansConfig(num_levels=3, codebook_size=[4, 4])
    with pytest.raises(ValueError, match=">= 2"):
        ResidualKMeansConfig(codebook_size=1)
    with pytest.raises(ValueError, match="num_levels"):
        ResidualKMeansConfig(num_levels=0)
    with pytest.raises(ValueError, match="max_points_per_centroid"):
        ResidualKMeansConfig(max_points_per_centroid=0)
    with pytest.raises(ValueError, match="sweeps_after_sample"):
        ResidualKMeansConfig(sweeps_after_sample=0)
    with pytest.raises(ValueError, match="backend must be 'torch' or 'faiss'"):
        ResidualKMeansConfig(balanced=False, backend="sklearn")
    assert ResidualKMeansConfig().quantizer_name == "balanced_rkmeans"
    assert ResidualKMeansConfig(balanced=False).quantizer_name == "rkmeans"


def test_resolve_collisions_appends_rank_within_group():
    codes = torch.tensor([[0, 1], [0, 1], [2, 3], [0, 1], [2, 3], [4, 4]])
    resolved, report = resolve_collisions(codes)
    assert resolved[:, -1].tolist() == [0, 1, 0, 2, 1, 0]
    assert report.colliding_items == 5 and report.max_group_size == 3
    assert report.collision_rate == pytest.approx(5 / 6)
    assert report.collision_rate_after == 0.0
    assert report.disambiguation_size == default_disambiguation_size(3) == 8
    assert torch.unique(resolved, dim=0).shape[0] == 6  # a bijection


def test_resolve_collisions_sizes():
    unique = torch.tensor([[0, 1], [1, 0]])
    resolved, report = resolve_collisions(unique)
    assert resolved.shape == (2, 2) and report.disambiguation_size == 0
    resolved, _ = resolve_collisions(unique, disambiguation_size=4)
    assert resolved.shape == (2, 3)
    clashing = torch.tensor([[0, 1], [0, 1], [0, 1]])
    with pytest.raises(ValueError, match="disambiguation_size >= 3"):
        resolve_collisions(clashing, disambiguation_size=2)
    with pytest.raises(ValueError, match="share their codes"):
        resolve_collisions(clashing, disambiguation_size=0)


def test_codebook_report_and_plot(tmp_path, saved_figures):
    codes = torch.tensor([[0, 0], [0, 1], [1, 1], [1, 1]])
    report = codebook_report(codes, [3, 2], num_semantic_levels=2)
    assert report["levels"][0]["used_codes"] == 2
    assert report["levels"][0]["utilisation"] == pytest.approx(2 / 3)
    assert report["levels"][1]["max_cluster"] == 3 and report["levels"][1]["min_cluster"] == 1
    assert report["collision_rate_before"] == pytest.approx(0.5) == collision_rate(codes)
    assert report["colliding_items_before"] == 2 and report["num_semantic_levels"] == 2
    assert report["levels"][1]["cv_cluster"] == pytest.approx(0.5)  # counts [1, 3]: std 1, mean 2
    assert report["prefixes"][0]["distinct_prefixes"] == 2
    other = torch.tensor([[0, 0], [1, 1], [2, 1], [2, 1]])
    other_report = codebook_report(other, [3, 2], num_semantic_levels=2)
    path = plot_codebook_report({"a": report, "b": other_report}, {"a": codes, "b": other}, tmp_path / "plot.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    (figure,) = saved_figures
    assert len(figure.axes) == 2  # one panel per level
    level_one = {line.get_label().split(":")[0]: line.get_ydata().tolist() for line in figure.axes[0].lines}
    assert level_one == {"a": [2, 2, 0], "b": [2, 1, 1]}  # items per code, largest first, unused codes as 0
    assert [line.get_ydata().tolist() for line in figure.axes[1].lines] == [[3, 1], [3, 1]]
    assert "a: 50.00%" in figure._suptitle.get_text()


def test_codebook_plot_overlays_variants_with_and_without_a_collision_level(tmp_path, saved_figures):
    resolved = torch.tensor([[0, 0, 0], [0, 0, 1], [1, 1, 0]])
    unique = torch.tensor([[0, 0], [1, 0], [1, 1]])
    reports = {
        "with": codebook_report(resolved, [2, 2, 4], num_semantic_levels=2),
        "without": codebook_report(unique, [2, 2], num_semantic_levels=2),
    }
    plot_codebook_report(reports, {"with": resolved, "without": unique}, tmp_path / "plot.png")
    (figure,) = saved_figures
    assert [len(ax.lines) for ax in figure.axes] == [2, 2, 1]  # the collision level's panel: only the variant with it
