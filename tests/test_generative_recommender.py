"""OneRec as a ranker for the shared evaluation code (``trainers.generative_recommender``)."""

import torch

from modeling_onerec import OneRecConfig, OneRecForConditionalGeneration
from tests.conftest import clustered_embeddings
from tokenization_semantic_id import ResidualKMeansConfig, SemanticIDTokenizer
from trainers.generative_recommender import GenerativeRecommender


def test_rank_returns_each_users_list_in_the_callers_order():
    # rank() batches users by history length; each result must still land on its own user. Distinct lengths make
    # the length order (so every batch) the same for both input orders, so the lists must match exactly.
    tokenizer = SemanticIDTokenizer.build([f"i{i}" for i in range(60)], clustered_embeddings(60),
                                          ResidualKMeansConfig(num_levels=2, codebook_size=4), progress=False)
    torch.manual_seed(0)
    model = OneRecForConditionalGeneration(OneRecConfig.from_tokenizer(tokenizer, preset="tiny", session_length=1))
    histories = [[f"i{(3 * user + j) % 60}" for j in range(length)] for user, length in enumerate((7, 1, 5, 2, 9, 3))]
    recommender = GenerativeRecommender(model.eval(), tokenizer, num_beams=8, batch_size=2)
    forward = recommender.rank(histories, 5, exclude_history=True)
    backward = recommender.rank(histories[::-1], 5, exclude_history=True)
    assert forward == backward[::-1]
    assert all(len(items) == 5 and not set(items) & set(history) for items, history in zip(forward, histories))
    alone = GenerativeRecommender(model, tokenizer, num_beams=8, batch_size=1).rank(histories[:1], 5, True)
    assert alone[0] == forward[0]
