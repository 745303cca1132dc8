"""The quantizer choice of the offline build: balanced / plain residual k-means, TIGER's RQ-VAE and OPQ, each
checked against a property it must have, and all of them against the one tokenizer format."""

import json
import os

import pytest
import torch

from tests.conftest import clustered_embeddings, run_without_the_project
from tokenization_semantic_id import (
    OPQConfig,
    ResidualKMeansConfig,
    RQVAEConfig,
    SemanticIDTokenizer,
    build_semantic_ids,
    fit_opq,
    fit_residual_kmeans,
    fit_rqvae,
    plot_quantizer_comparison,
    quantizer_config,
    quantizer_statistics,
    reconstruction_report,
    resolve_collisions,
)
from tokenization_semantic_id import rqvae as rqvae_module
from tokenization_semantic_id.code_assignment import assign_codes

NUM_ITEMS = 600
# Small settings of every quantizer (3 levels of 8 codes); the RQ-VAE a few hundred CPU-milliseconds (a tiny model on
# these embeddings of norm ~13 wants a larger step than the default 1e-3 to converge in 150 steps).
TINY_RQVAE = dict(
    codebook_size=8,
    hidden_sizes=(32, 16),
    latent_dim=8,
    num_steps=150,
    batch_size=128,
    log_every=10,
    learning_rate=1e-2,
)
CONFIGS = {
    "balanced_rkmeans": ResidualKMeansConfig(codebook_size=8),
    "rkmeans": ResidualKMeansConfig(codebook_size=8, balanced=False),
    "rkmeans_faiss": ResidualKMeansConfig(codebook_size=8, balanced=False, backend="faiss"),
    "rqvae": RQVAEConfig(**TINY_RQVAE),
    "opq": OPQConfig(codebook_size=8, opq_iterations=5),
}


def item_ids(count, prefix="i"):
    return [f"{prefix}{index}" for index in range(count)]


def build(name, embeddings=None, **kwargs):
    embeddings = clustered_embeddings(NUM_ITEMS, dim=18) if embeddings is None else embeddings
    return build_semantic_ids(item_ids(len(embeddings)), embeddings, CONFIGS[name], progress=False, **kwargs)


def assert_same_tokenizer(first: SemanticIDTokenizer, second: SemanticIDTokenizer):
    assert first.item_ids == second.item_ids and first.quantizer_type == second.quantizer_type
    assert torch.equal(first.item_codes, second.item_codes)
    assert first.codebook_sizes == second.codebook_sizes and first.build_info == second.build_info
    assert len(first.codebooks) == len(second.codebooks)
    assert all(torch.equal(a, b) for a, b in zip(first.codebooks, second.codebooks))
    assert first.quantizer_tensors.keys() == second.quantizer_tensors.keys()
    assert all(torch.equal(first.quantizer_tensors[k], second.quantizer_tensors[k]) for k in first.quantizer_tensors)
    first_trie, second_trie = vars(first.trie), vars(second.trie)
    assert first_trie.keys() == second_trie.keys()
    for key, value in first_trie.items():
        assert torch.equal(value, second_trie[key]) if isinstance(value, torch.Tensor) else value == second_trie[key]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_quantizer_gives_one_tokenizer_format(tmp_path, name):
    embeddings = clustered_embeddings(NUM_ITEMS, dim=18)
    tokenizer = build(name, embeddings)
    config = CONFIGS[name]
    assert tokenizer.quantizer_type == config.quantizer_name == tokenizer.build_info["quantizer"]["name"]
    assert tokenizer.num_semantic_levels == 3 and tokenizer.embedding_dim == 18
    # bijective item <-> code after collision resolution
    assert torch.unique(tokenizer.item_codes, dim=0).shape[0] == NUM_ITEMS
    assert tokenizer.decode_items(tokenizer.encode_items(tokenizer.item_ids)) == tokenizer.item_ids
    assert tokenizer.statistics()["collision_rate_after"] == 0.0
    if name != "balanced_rkmeans":  # balanced codes are capacity-bound assignments, the others the cold-start rule
        semantic = assign_codes(tokenizer.quantizer_type, embeddings, tokenizer.codebooks, tokenizer.quantizer_tensors)
        assert torch.equal(semantic, tokenizer.item_codes[:, :3])

    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = SemanticIDTokenizer.from_pretrained(tmp_path / "tok")
    assert_same_tokenizer(tokenizer, loaded)

    # cold start: a copy of item 0 (its semantic code is taken) and a new point; same codes before and after a reload
    new = torch.cat([embeddings[:1], 3 * torch.randn(1, 18, generator=torch.Generator().manual_seed(5))])
    old_codes = {tuple(code) for code in tokenizer.item_codes.tolist()}
    tokens = tokenizer.add_items(["new0", "new1"], new)
    assert torch.equal(loaded.add_items(["new0", "new1"], new), tokens)
    new_codes = tokenizer.item_codes[-2:]
    assert not {tuple(code) for code in new_codes.tolist()} & old_codes and not torch.equal(new_codes[0], new_codes[1])
    expected = assign_codes(tokenizer.quantizer_type, new[:1], tokenizer.codebooks, tokenizer.quantizer_tensors)
    assert torch.equal(new_codes[0, :3], expected[0])
    if name != "balanced_rkmeans":
        assert torch.equal(new_codes[0, :3], tokenizer.item_codes[0, :3])  # the same embedding, the same code
    assert tokenizer.decode_items(tokens) == ["new0", "new1"]
    assert tokenizer.trie.num_items == NUM_ITEMS + 2
    with pytest.raises(ValueError, match="dimension 7 but 18"):
        tokenizer.add_items(["new2"], torch.randn(1, 7))


def test_the_default_quantizer_is_balanced_residual_kmeans_as_before():
    embeddings = clustered_embeddings(500, dim=12, seed=3)
    config = ResidualKMeansConfig(codebook_size=[9, 6, 4])
    by_default = build_semantic_ids(item_ids(500), embeddings, config, progress=False)
    by_name = build_semantic_ids(item_ids(500), embeddings, progress=False, quantizer="balanced_rkmeans")
    direct, _ = resolve_collisions(fit_residual_kmeans(embeddings, config, progress=False).codes)
    assert torch.equal(by_default.item_codes, direct)
    assert by_default.quantizer_type == by_name.quantizer_type == "balanced_rkmeans"
    assert by_name.build_info["quantizer"] == {"name": "balanced_rkmeans", **ResidualKMeansConfig().to_dict()}
    info = by_default.build_info
    assert info["quantizer"]["balanced"] is True and all(level["iterations"] > 0 for level in info["levels"])
    # the k-means reconstruction error is the distance of each embedding to the sum of its centroids
    assert info["reconstruction"]["mean_distance"] == pytest.approx(info["residual_norm"][-1], rel=1e-5)


def test_quantizer_choice_is_checked():
    plain = build_semantic_ids(item_ids(300), clustered_embeddings(300), progress=False, quantizer="rkmeans")
    assert plain.build_info["quantizer"]["balanced"] is False and plain.quantizer_type == "rkmeans"
    assert plain.build_info["quantizer"]["codebook_size"] == [256, 256, 256]  # rkmeans's default config
    ids, embeddings = item_ids(40), clustered_embeddings(40)
    with pytest.raises(ValueError, match="quantizer='opq' but the config given is a 'balanced_rkmeans' config"):
        build_semantic_ids(ids, embeddings, ResidualKMeansConfig(), quantizer="opq", progress=False)
    with pytest.raises(ValueError, match="Unknown quantizer 'vq'"):
        build_semantic_ids(ids, embeddings, quantizer="vq", progress=False)
    with pytest.raises(ValueError, match="contradicts balanced=True"):
        quantizer_config("rkmeans", balanced=True)
    with pytest.raises(ValueError, match="rqvae has no setting epochs"):
        quantizer_config("rqvae", epochs=3)
    with pytest.raises(ValueError, match="power of two"):
        OPQConfig(codebook_size=12)
    with pytest.raises(ValueError, match="power of two"):
        OPQConfig(codebook_size=[8, 16, 8])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        RQVAEConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        RQVAEConfig(num_steps=0)
    with pytest.raises(ValueError, match="faiss has no balanced k-means"):
        ResidualKMeansConfig(backend="faiss")
    with pytest.raises(ValueError, match="larger than the catalogue"):
        build_semantic_ids(ids, embeddings, RQVAEConfig(codebook_size=64), progress=False)
    with pytest.raises(ValueError, match="larger than the catalogue"):
        build_semantic_ids(ids, embeddings, OPQConfig(codebook_size=64), progress=False)


def test_rqvae_loss_falls_and_is_seeded():
    embeddings = clustered_embeddings(NUM_ITEMS, dim=18)
    rng_state = torch.random.get_rng_state()
    fit = fit_rqvae(embeddings, RQVAEConfig(**TINY_RQVAE), progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's global RNG is left alone
    curve = fit.loss_curve
    assert [point["step"] for point in curve] == list(range(10, 151, 10))
    assert curve[-1]["loss"] < 0.5 * curve[0]["loss"]
    assert curve[-1]["reconstruction"] < curve[0]["reconstruction"]
    again = fit_rqvae(embeddings, RQVAEConfig(**TINY_RQVAE), progress=False)
    assert torch.equal(fit.codes, again.codes)
    assert set(fit.reconstruction) == {
        "mse",
        "mean_distance",
        "relative_error",
        "latent_mse",
        "latent_mean_distance",
        "latent_relative_error",
    }
    assert 0 < fit.reconstruction["relative_error"] < 1


def test_rqvae_dead_code_remedy_revives_a_collapsed_codebook(monkeypatch):
    # Every codebook starts with one code at the origin and the others far away: every item picks code 0, and only
    # chosen codes get a gradient, so without the remedy each level keeps using one code.
    def collapsed_init(model, points, iterations, seed):
        with torch.no_grad():
            for codebook in model.codebooks:
                codebook.fill_(1e4)
                codebook[0] = 0

    monkeypatch.setattr(rqvae_module, "_kmeans_init", collapsed_init)
    embeddings = clustered_embeddings(NUM_ITEMS, dim=18)
    stuck = fit_rqvae(embeddings, RQVAEConfig(**TINY_RQVAE, dead_code_interval=0), progress=False)
    assert [stuck.codes[:, level].unique().numel() for level in range(3)] == [1, 1, 1]
    assert stuck.reseeded_codes == [0, 0, 0]
    revived = fit_rqvae(embeddings, RQVAEConfig(**TINY_RQVAE, dead_code_interval=20), progress=False)
    assert all(count >= 7 for count in revived.reseeded_codes)  # all 7 dead codes of each level at the first check
    assert all(revived.codes[:, level].unique().numel() > 1 for level in range(3))
    assert revived.reconstruction["mse"] < stuck.reconstruction["mse"]


def correlated_embeddings(num_items=2000, dim=24, seed=0):
    """A few latent factors mixed into every dimension, most variance in the first columns: PQ's column blocks
    split correlated dimensions (and waste its last sub-spaces on little variance), OPQ's rotation does not."""
    generator = torch.Generator().manual_seed(seed)
    factors = torch.randn(num_items, 6, generator=generator)
    mixed = factors @ torch.randn(6, dim, generator=generator) + 0.1 * torch.randn(num_items, dim, generator=generator)
    mixed[:, : dim // 3] *= 5
    return mixed


def test_opq_reconstructs_better_than_pq_on_correlated_dimensions():
    embeddings = correlated_embeddings()
    pq = fit_opq(embeddings, OPQConfig(codebook_size=16, rotation=False))
    opq = fit_opq(embeddings, OPQConfig(codebook_size=16, opq_iterations=10))
    assert opq.reconstruction["relative_error"] < 0.75 * pq.reconstruction["relative_error"]
    assert torch.allclose(opq.rotation.T @ opq.rotation, torch.eye(24), atol=1e-4)  # orthonormal
    assert torch.equal(pq.rotation, torch.eye(24))
    # a width that the number of sub-spaces does not divide is padded: R is [D', D] with orthonormal columns
    padded = fit_opq(embeddings[:, :22].contiguous(), OPQConfig(codebook_size=16, opq_iterations=3))
    assert padded.rotation.shape == (24, 22) and [c.shape for c in padded.codebooks] == [(16, 8)] * 3
    assert torch.allclose(padded.rotation.T @ padded.rotation, torch.eye(22), atol=1e-4)


def test_reconstruction_report():
    embeddings = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    report = reconstruction_report(embeddings, torch.zeros(2, 2))
    assert report == pytest.approx({"mse": 2.0, "mean_distance": 1.0, "relative_error": 2.0})
    assert reconstruction_report(embeddings, embeddings)["relative_error"] == 0.0


def test_quantizer_statistics_and_comparison_plot(tmp_path, saved_figures):
    embeddings = clustered_embeddings(NUM_ITEMS, dim=18)
    stats = {name: quantizer_statistics(build(name, embeddings)) for name in ("balanced_rkmeans", "rkmeans", "opq")}
    balanced = stats["balanced_rkmeans"]
    assert balanced["quantizer"] == "balanced_rkmeans" and balanced["num_semantic_levels"] == 3
    assert [level["cv_cluster"] for level in balanced["levels"][:3]] == [0.0, 0.0, 0.0]  # 600 / 8 = 75 per code
    assert balanced["colliding_items_before"] == round(balanced["collision_rate_before"] * NUM_ITEMS)
    assert stats["rkmeans"]["reconstruction"]["relative_error"] > 0
    path = plot_quantizer_comparison(stats, tmp_path / "comparison.png", title="tiny")
    assert path.read_bytes()[:4] == b"\x89PNG"
    (figure,) = saved_figures
    utilisation, spread, collisions, error = figure.axes
    assert len(utilisation.patches) == len(spread.patches) == 3 * 3  # 3 quantizers x 3 levels
    assert [bar.get_height() for bar in utilisation.patches[:3]] == [
        100 * level["utilisation"] for level in balanced["levels"][:3]
    ]
    assert [bar.get_height() for bar in collisions.patches] == pytest.approx(
        [100 * stats[name]["collision_rate_before"] for name in stats]
    )
    assert [bar.get_height() for bar in error.patches] == pytest.approx(
        [stats[name]["reconstruction"]["relative_error"] for name in stats]
    )
    assert [label.get_text() for label in error.get_xticklabels()] == list(stats)


def test_cold_start_from_a_remote_code_load_without_faiss(tmp_path):
    embeddings = clustered_embeddings(NUM_ITEMS, dim=18)
    new = 3 * torch.randn(3, 18, generator=torch.Generator().manual_seed(9))
    expected = {}
    for name in ("rqvae", "opq"):
        tokenizer = build(name, embeddings)
        tokenizer.save_pretrained(tmp_path / name)
        copied = {entry for entry in os.listdir(tmp_path / name) if entry.endswith(".py")}
        assert "code_assignment.py" in copied and not {"rqvae.py", "opq.py", "quantizers.py"} & copied
        expected[name] = tokenizer.add_items(["n0", "n1", "n2"], new).tolist()
    out = run_without_the_project(
        f"""
        import importlib.abc
        class NoFaiss(importlib.abc.MetaPathFinder):  # a server without faiss must still place new items
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "faiss":
                    raise ImportError("faiss blocked")
        sys.meta_path.insert(0, NoFaiss())
        from transformers import AutoTokenizer
        new = {new.tolist()!r}
        tokens = {{}}
        for name in ("rqvae", "opq"):
            tok = AutoTokenizer.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True)
            tokens[name] = tok.add_items(["n0", "n1", "n2"], new).tolist()
        print(json.dumps(tokens))
        """,
        tmp_path,
    )
    assert out == expected


def test_example_compares_quantizers(tmp_path):
    from tests.test_examples import FAST_SEMANTIC_IDS, load_example

    rqvae = "--rqvae_num_steps 20 --rqvae_hidden_sizes 32 16 --rqvae_latent_dim 8 --rqvae_batch_size 256".split()
    arguments = ["--quantizer", "opq", "--compare_quantizers", "rqvae", "rkmeans", "--kmeans_backend", "faiss"]
    report = load_example("build_semantic_ids").main(
        FAST_SEMANTIC_IDS + arguments + rqvae + ["--output_dir", str(tmp_path)]
    )
    assert [row["name"] for row in report["variants"]] == ["opq", "rqvae", "rkmeans"]
    assert report["variants"][2]["stats"]["quantizer"] == "rkmeans"
    assert all(row["stats"]["collision_rate_after"] == 0.0 for row in report["variants"])
    tokenizer = SemanticIDTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer.quantizer_type == "opq" and tokenizer.build_info["quantizer"]["rotation"] is True
    assert (tmp_path / "quantizer_comparison.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "semantic_id_report.json").read_text())
    assert saved["variants"][1]["fit"]["steps"] == 20


@pytest.mark.parametrize(
    "arguments, match",
    [
        (["--quantizer", "vq"], "Unknown quantizer 'vq'"),
        (["--quantizer", "opq", "--codebook_size", "12"], "power of two"),
        (["--quantizer", "rqvae", "--balanced", "false"], "contradicts --quantizer rqvae"),
        (["--compare_quantizers", "rqvae", "--rqvae_num_steps", "0"], "num_steps must be a positive int"),
    ],
)
def test_example_refuses_a_bad_quantizer_choice_before_any_work(tmp_path, arguments, match):
    from tests.test_examples import load_example

    with pytest.raises(ValueError, match=match):
        load_example("build_semantic_ids").main(["--output_dir", str(tmp_path / "out")] + arguments)
    assert not (tmp_path / "out").exists()
