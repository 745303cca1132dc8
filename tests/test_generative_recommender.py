"""OneRec as a ranker for the shared evaluation code (``trainers.evaluation.generative``)."""

import itertools
import math

import pytest
import torch

from tests.conftest import semantic_id_tokenizer, tiny_onerec
from trainers.evaluation.generative import GenerativeRecommender, code_level_mass


def test_rank_returns_each_users_list_in_the_callers_order():
    # rank() batches users by history length; each result must still land on its own user. Distinct lengths make
    # the length order (so every batch) the same for both input orders, so the lists must match exactly.
    tokenizer = semantic_id_tokenizer([f"i{i}" for i in range(60)], num_levels=2, codebook_size=4)
    model = tiny_onerec(tokenizer, seed=0, session_length=1)
    histories = [[f"i{(3 * user + j) % 60}" for j in range(length)] for user, length in enumerate((7, 1, 5, 2, 9, 3))]
    recommender = GenerativeRecommender(model.eval(), tokenizer, num_beams=8, batch_size=2)
    forward = recommender.rank(histories, 5, exclude_history=True)
    backward = recommender.rank(histories[::-1], 5, exclude_history=True)
    assert forward == backward[::-1]
    assert all(len(items) == 5 and not set(items) & set(history) for items, history in zip(forward, histories))
    alone = GenerativeRecommender(model, tokenizer, num_beams=8, batch_size=1).rank(histories[:1], 5, True)
    assert alone[0] == forward[0]


def exhaustive_item_scores(model, tokenizer, history, renormalize=False):
    """Plain reference: every catalogue item scored by one teacher-forced pass, ``log p(c_1..c_L | history)`` with
    each code scored by the log-softmax over its level's codes, or (``renormalize``) renormalised over the trie
    children of its prefix (what the constrained search renormalises over when nothing is excluded). Returns
    ``{item_id: score}``."""
    offsets = list(tokenizer.level_offsets) + [tokenizer.vocab_size]
    codes = tokenizer.item_tokens.tolist()  # [N, L] token ids
    children = {}
    for row in codes:
        for level in range(len(row)):
            children.setdefault(tuple(row[:level]), set()).add(row[level])
    encoded = tokenizer.batch_encode_histories([history] * len(codes))
    decoder_input = torch.tensor([[tokenizer.pad_token_id, tokenizer.bos_token_id] + row[:-1] for row in codes])
    with torch.no_grad():
        logits = model(**encoded, decoder_input_ids=decoder_input).logits.double()  # [N, 1 + L, V]
    scores = {}
    for index, row in enumerate(codes):
        total = 0.0
        for level, token in enumerate(row):
            allowed = sorted(children[tuple(row[:level])])
            if renormalize:
                log_probs = torch.log_softmax(logits[index, level + 1, allowed], dim=-1)
                total += float(log_probs[allowed.index(token)])
            else:
                log_probs = torch.log_softmax(logits[index, level + 1, offsets[level] : offsets[level + 1]], dim=-1)
                total += float(log_probs[token - offsets[level]])
        scores[tokenizer.item_ids[index]] = total
    return scores


def test_beam_ranking_against_exhaustive_scoring_of_every_item():
    # The beam approximation behind every Recall/NDCG number: with a beam as wide as the catalogue the ranking IS the
    # exhaustive one; with a narrow beam (here the default for k = 10: max(k, first-level codebook size) = 10) every
    # returned item carries its exact score, best first, and most of the exhaustive top-k is found.
    tokenizer = semantic_id_tokenizer([f"i{i}" for i in range(48)], num_levels=3, codebook_size=4)
    model = tiny_onerec(tokenizer, seed=3, session_length=1).eval()
    for history, renormalize in itertools.product((["i1", "i7", "i30"], ["i44"]), (False, True)):
        exact = exhaustive_item_scores(model, tokenizer, history, renormalize)
        truth = sorted(exact, key=exact.get, reverse=True)
        full = GenerativeRecommender(model, tokenizer, num_beams=tokenizer.num_items, renormalize_logits=renormalize)
        assert full.rank([history], 10, exclude_history=False)[0] == truth[:10]
        narrow = model.recommend(
            tokenizer,
            [history],
            num_sessions=10,
            num_beams=10,
            session_length=1,
            exclude_history=False,
            forbid_repeats=False,
            renormalize_logits=renormalize,
        )[0]
        found = [session.items[0] for session in narrow]
        assert [s.score for s in narrow] == sorted((s.score for s in narrow), reverse=True)
        for session in narrow:
            assert session.score == pytest.approx(exact[session.items[0]], abs=1e-4)
        assert found[0] == truth[0] or exact[found[0]] < exact[truth[0]]  # never better than the truth
        assert len(set(found) & set(truth[:10])) >= 8  # 10 of 10 for both histories at this seed


def test_code_level_mass_against_exhaustive_item_scores():
    # Teacher-forced per-level figures: summed over the levels, each sample's level log-probs are its item's exhaustive
    # score under the level softmax and the renormalised ones its renormalised score; the valid mass is what separates
    # the two, and the allowed codes are the trie's children of the target's prefix. A 3-level, 40-item catalogue of
    # 4-code levels (and a collision level) leaves some codes unused below most prefixes (so valid_mass < 1 there).
    tokenizer = semantic_id_tokenizer([f"i{i}" for i in range(40)], num_levels=3, codebook_size=4)
    model = tiny_onerec(tokenizer, seed=5, session_length=1)
    samples = [{"history": ["i1", "i7", "i30"], "target": ["i12"]}, {"history": ["i39"], "target": "i3"}]
    codes = tokenizer.item_tokens.tolist()
    per_sample = [code_level_mass(model, tokenizer, [sample], batch_size=1) for sample in samples]
    assert model.training  # the model's mode is given back
    for sample, figures in zip(samples, per_sample):
        target = sample["target"][0] if isinstance(sample["target"], list) else sample["target"]
        model.eval()
        level = exhaustive_item_scores(model, tokenizer, sample["history"])[target]
        renormalized = exhaustive_item_scores(model, tokenizer, sample["history"], renormalize=True)[target]
        model.train()
        assert sum(figures["log_prob_level"]) == pytest.approx(level, abs=1e-4)
        assert sum(figures["log_prob_renormalized"]) == pytest.approx(renormalized, abs=1e-4)
        for mass, lp, lr in zip(figures["valid_mass"], figures["log_prob_level"], figures["log_prob_renormalized"]):
            assert 0 < mass <= 1 + 1e-6 and lr == pytest.approx(lp - math.log(mass), abs=1e-5)
        row = codes[tokenizer.item_index(target)]
        expected = [len({other[level] for other in codes if other[:level] == row[:level]}) for level in range(len(row))]
        assert figures["allowed_codes"] == expected
    assert any(mass < 0.99 for figures in per_sample for mass in figures["valid_mass"])
    both = code_level_mass(model, tokenizer, samples, batch_size=2)  # batched (padded) = the mean of the singles
    for key in both:
        assert both[key] == pytest.approx([(a + b) / 2 for a, b in zip(*(f[key] for f in per_sample))], abs=1e-4)
    with pytest.raises(ValueError, match="samples is empty"):
        code_level_mass(model, tokenizer, [])


@pytest.mark.parametrize(
    "level,renormalized,expected",
    [
        ((0.2, 0.1), (0.3, 0.05), True),  # the higher Recall@10 wins
        ((0.3, 0.1), (0.3, 0.12), True),  # then the higher NDCG@10
        ((0.3, 0.1), (0.3, 0.1), False),  # then the model's own distribution
        ((0.3, 0.1), (0.2, 0.2), False),
    ],
)
def test_choose_renormalize_logits_rule(monkeypatch, level, renormalized, expected):
    from trainers.evaluation import generative

    tokenizer = semantic_id_tokenizer([f"i{i}" for i in range(12)], num_levels=2, codebook_size=4)
    model = tiny_onerec(tokenizer, seed=0, session_length=1).eval()
    table = {False: level, True: renormalized}
    seen = []

    def fake_evaluate(recommender, samples, ks, *, exclude_history, batch_size):
        seen.append((recommender.renormalize_logits, exclude_history))
        recall, ndcg = table[recommender.renormalize_logits]
        return {"recall@10": recall, "ndcg@10": ndcg, "recall@5": 0.0, "ndcg@5": 0.0}, []

    monkeypatch.setattr(generative, "evaluate_recommender", fake_evaluate)
    choice, metrics = generative.choose_renormalize_logits(model, tokenizer, [], exclude_history=False)
    assert choice is expected and seen == [(False, False), (True, False)]
    assert metrics[True]["recall@10"] == renormalized[0] and metrics[False]["ndcg@10"] == level[1]
