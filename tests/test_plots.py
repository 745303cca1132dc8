"""The data behind the training plots, read back from the figures (not just that a PNG was written)."""

import pytest
import torch

from trainers.evaluation.plots import hit_rank_counts, plot_expert_load, plot_hit_ranks, plot_training_curves


def test_training_curves_draw_each_logged_series(tmp_path, saved_figures):
    history = [
        {"step": 10, "loss": 3.0, "ntp_loss": 2.9, "aux_loss": 1.2, "z_loss": 0.5},
        {"step": 20, "loss": 2.0, "ntp_loss": 1.9, "aux_loss": 1.1, "z_loss": 0.4},
        {"step": 20, "eval_loss": 2.2, "eval_recall@10": 0.05, "eval_runtime": 9.0, "eval_samples_per_second": 3.0},
        {"step": 40, "eval_loss": 2.1, "eval_recall@10": 0.07, "eval_runtime": 8.0, "eval_samples_per_second": 3.0},
    ]
    path = plot_training_curves(history, tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    (figure,) = saved_figures
    losses, moe, metrics = figure.axes

    def lines(axis):
        return {line.get_label(): line.get_xydata().tolist() for line in axis.lines}

    assert lines(losses) == {
        "loss": [[10, 3.0], [20, 2.0]],
        "ntp_loss": [[10, 2.9], [20, 1.9]],
        "eval_loss": [[20, 2.2], [40, 2.1]],
    }
    assert lines(moe) == {"aux_loss": [[10, 1.2], [20, 1.1]], "z_loss": [[10, 0.5], [20, 0.4]]}
    assert lines(metrics) == {"eval_recall@10": [[20, 0.05], [40, 0.07]]}  # timings are not metrics


def test_expert_load_map_is_share_times_experts(tmp_path, saved_figures):
    counts = torch.tensor([[10.0, 10.0, 10.0, 10.0], [40.0, 0.0, 0.0, 0.0]])
    plot_expert_load(counts, tmp_path / "load.png", title="run")
    (figure,) = saved_figures
    image = figure.axes[0].images[0].get_array()
    assert image.tolist() == [[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]]  # 1.0 = balanced, 0 = a dead expert
    assert "min 0.00, max 4.00" in figure.axes[0].get_title()
    assert image.shape == (2, 4) and pytest.approx(image.sum()) == 8.0


def test_validation_curves_put_runs_side_by_side(tmp_path, saved_figures):
    from trainers.evaluation.plots import plot_validation_curves

    runs = {
        "OneRec m=5": [
            {"epoch": 1.0, "eval_loss": 2.4, "eval_recall@10": 0.05},
            {"epoch": 2.0, "eval_loss": 2.2, "eval_recall@10": 0.06},
        ],
        "TIGER-style m=1": [{"epoch": 1.0, "eval_loss": 2.8, "eval_recall@10": 0.04}, {"loss": 3.0, "step": 5}],
    }
    plot_validation_curves(runs, tmp_path / "curves.png")
    (figure,) = saved_figures
    loss, recall = figure.axes
    assert {line.get_label(): line.get_xydata().tolist() for line in loss.lines} == {
        "OneRec m=5": [[1.0, 2.4], [2.0, 2.2]], "TIGER-style m=1": [[1.0, 2.8]]}  # fmt: skip
    assert [line.get_xydata().tolist() for line in recall.lines] == [[[1.0, 0.05], [2.0, 0.06]], [[1.0, 0.04]]]


def test_hit_rank_counts_and_the_bars_drawn(tmp_path, saved_figures):
    ranked = [["a", "b", "c"], ["b", "a", "c"], ["c", "b", "a"], ["x", "y", "z"]]
    targets = ["a", "a", "a", "a"]  # found at positions 1, 2, 3 and nowhere
    assert hit_rank_counts(ranked, targets, k=3) == [1, 1, 1]
    assert hit_rank_counts(ranked, targets, k=2) == [1, 1, 0][:2]
    with pytest.raises(ValueError, match="3 ranked lists for 4 targets"):
        hit_rank_counts(ranked[:3], targets)
    path = plot_hit_ranks({"first": ranked, "always": [["a"]] * 4}, targets, tmp_path / "hits.png", k=3)
    assert path.stat().st_size > 1000
    (axis,) = saved_figures[-1].axes
    heights = [patch.get_height() for patch in axis.patches]
    assert heights == [0.25, 0.25, 0.25, 1.0, 0.0, 0.0]  # model 1's three bars, then model 2's
    assert [text.get_text() for text in axis.get_legend().get_texts()] == [
        "first (recall@3 0.7500)",
        "always (recall@3 1.0000)",
    ]
