"""GPU paths (skipped without CUDA): the trie and the processor on the device, k-means on the device."""

import pytest
import torch

from tests.conftest import clustered_embeddings, tiny_t5
from tests.test_constrained_decoding import _random_prefix
from tokenization_semantic_id import ResidualKMeansConfig, balanced_kmeans, build_semantic_ids

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_processor_on_gpu_equals_cpu(small_tokenizer):
    tokenizer = small_tokenizer
    generator = torch.Generator().manual_seed(0)
    history = [
        [tokenizer.item_ids[i] for i in torch.randint(tokenizer.num_items, (100,), generator=generator)]
        for _ in range(8)
    ]
    cpu = tokenizer.session_logits_processor(3, exclude_items=history, num_beams=1)
    cases = [
        torch.tensor([_random_prefix(tokenizer, generator, slot, level, 3) for _ in range(8)])
        for slot in range(3)
        for level in range(tokenizer.num_levels)
    ]
    expected = [cpu.allowed_mask(rows) for rows in cases]
    tokenizer.trie.to("cuda")
    try:
        gpu = tokenizer.session_logits_processor(3, exclude_items=history, num_beams=1)
        for rows, mask in zip(cases, expected):
            assert torch.equal(gpu.allowed_mask(rows.cuda()).cpu(), mask)
    finally:
        tokenizer.trie.to("cpu")


def test_balanced_kmeans_on_gpu_is_balanced_and_deterministic():
    points = clustered_embeddings(1001, dim=32).cuda()
    first = balanced_kmeans(points, 64, seed=0)
    second = balanced_kmeans(points, 64, seed=0)
    sizes = torch.bincount(first.assignment, minlength=64)
    assert sizes.min() == 1001 // 64 and sizes.max() == 1001 // 64 + 1
    assert torch.equal(first.assignment, second.assignment)


def test_generate_on_gpu_gives_only_real_items():
    tokenizer = build_semantic_ids(
        [f"i{i}" for i in range(500)],
        clustered_embeddings(500),
        ResidualKMeansConfig(num_levels=3, codebook_size=8, device="cuda"),
        progress=False,
    )
    tokenizer.trie.to("cuda")
    model = tiny_t5(tokenizer.vocab_size).cuda()
    histories = [["i1", "i2"], ["i3"]]
    inputs = tokenizer.batch_encode_histories(histories).to("cuda")
    out = model.generate(
        **inputs,
        logits_processor=[tokenizer.session_logits_processor(5, exclude_items=histories, num_beams=16)],
        num_beams=16,
        num_return_sequences=16,
        max_new_tokens=5 * (tokenizer.num_levels + 1) + 1,
        do_sample=False,
    )
    for row, sequence in enumerate(out):
        session = tokenizer.decode_session(sequence.cpu(), prefix_length=1)
        assert len(session) == 5 and None not in session and len(set(session)) == 5
        assert not set(session) & set(histories[row // 16])
