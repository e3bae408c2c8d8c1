"""Conversations as prompts: rendering, pooling masks, fitting and generation in chat form."""

import pytest
import torch

from lineas_tl import HookedSteerer, collect_activations
from lineas_tl.chat import as_conversations, render

pytestmark = pytest.mark.filterwarnings("ignore:LinEAS stopped")

SITE = "blocks.1.hook_mlp_out"
CANON = "blocks.1.mlp.hook_out"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_render_marks_user_content_and_matches_the_template_tokens(chat_llama_model):
    tok = chat_llama_model.tokenizer
    conv = user("the cat sat on the mat")
    r = render(tok, conv)
    assert r.text.endswith("<|endoftext|>assistant\n")  # the generation prompt is there
    assert r.ids.tolist() == tok.apply_chat_template(conv, add_generation_prompt=True)["input_ids"]
    pooled = tok.decode(r.ids[r.pool_mask.bool()])
    assert pooled.strip() == "the cat sat on the mat"
    assert r.pool_mask.sum() < len(r.ids)  # template tokens are left out
    assert render(tok, conv, "all").pool_mask.all()
    content = render(tok, [{"role": "system", "content": "be nice"}, *conv], "content")
    assert tok.decode(content.ids[content.pool_mask.bool()]).replace(" ", "") == "benicethecatsatonthemat"


def test_prefilled_reply_is_continued_not_closed(chat_llama_model):
    tok = chat_llama_model.tokenizer
    r = render(tok, [*user("hi"), {"role": "assistant", "content": "the dog"}])
    assert r.text.rstrip().endswith("the dog")
    assert "assistant\n<|endoftext|>" not in r.text


def test_chat_pooling_is_the_mean_over_user_content_tokens(chat_llama_model):
    conv = user("you are a stupid idiot")
    r = render(chat_llama_model.tokenizer, conv)
    _, cache = chat_llama_model.run_with_cache(r.ids[None])
    expected = cache[SITE][0][r.pool_mask.bool()].mean(0)
    got = collect_activations(chat_llama_model, [conv], SITE, progress=False)[CANON][0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    from_strings = collect_activations(chat_llama_model, ["you are a stupid idiot"], SITE, chat=True, progress=False)
    torch.testing.assert_close(from_strings[CANON][0], got)


def test_chat_batches_equal_one_by_one(chat_llama_model, text_sets):
    prompts = text_sets["source"][:5]
    for chat_pool in ("user", "all"):
        batched = collect_activations(
            chat_llama_model, prompts, SITE, batch_size=5, chat=True, chat_pool=chat_pool, progress=False
        )
        for i, p in enumerate(prompts):
            alone = collect_activations(chat_llama_model, [p], SITE, chat=True, chat_pool=chat_pool, progress=False)
            torch.testing.assert_close(batched[CANON][i], alone[CANON][0], atol=1e-5, rtol=1e-5)


def test_model_without_chat_template_is_a_clear_error(llama_model):
    with pytest.raises(ValueError, match="no chat template"):
        collect_activations(llama_model, ["hello"], SITE, chat=True, progress=False)
    with pytest.raises(ValueError, match="no chat template"):
        HookedSteerer(llama_model, SITE).fit([user("a")], [user("b")], steps=1)


def test_bad_chat_inputs_are_named():
    with pytest.raises(TypeError, match="token ids"):
        as_conversations([[1, 2, 3]], chat=True)
    with pytest.raises(TypeError, match="single prompt"):
        as_conversations("hello", chat=True)
    assert as_conversations(["hi"], chat=True) == [user("hi")]


@pytest.fixture
def chat_steerer(chat_llama_model, text_sets):
    steerer = HookedSteerer(chat_llama_model, ["blocks.0.hook_mlp_out", SITE])
    return steerer.fit(text_sets["source"][:16], text_sets["target"][:16], chat=True, steps=20, lr=0.05, progress=False)


def test_chat_fit_moves_source_towards_target(chat_steerer, text_sets):
    model = chat_steerer.model
    src, tgt = text_sets["source"][:16], text_sets["target"][:16]
    kw = dict(sites=SITE, chat=True, progress=False)
    before = collect_activations(model, src, **kw)[CANON]
    after = collect_activations(model, src, maps=chat_steerer.maps_, **kw)[CANON]
    target = collect_activations(model, tgt, **kw)[CANON]
    gap = lambda x: (x.mean(0) - target.mean(0)).norm()  # noqa: E731
    assert gap(after) < 0.7 * gap(before)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_chat_generation_batched_and_cached_equal_one_by_one(chat_steerer, positions):
    convs = [user("the cat"), user("you are a stupid idiot and I hate you"), user("have a lovely day")]
    kw = dict(strength=1.0, positions=positions, max_new_tokens=6, return_type="tokens")
    ref = [chat_steerer.generate(c, use_past_kv_cache=False, **kw)[0] for c in convs]
    for cache in (True, False):
        batched = chat_steerer.generate(convs, use_past_kv_cache=cache, **kw)
        n = batched.shape[1] - 6
        for row, alone in zip(batched, ref):
            assert row[n:].tolist() == alone[-6:].tolist()
    one = chat_steerer.generate(convs[0], use_past_kv_cache=True, **kw)[0]
    assert one.tolist() == ref[0].tolist()


def test_chat_generation_returns_the_reply_and_generated_scope_leaves_prompt_alone(chat_steerer):
    conv = user("you are a stupid idiot")
    reply = chat_steerer.generate(conv, strength=1.0, max_new_tokens=5, return_type="continuation")
    assert isinstance(reply, str)
    same = chat_steerer.generate(["you are a stupid idiot"], chat=True, strength=1.0, max_new_tokens=5,
                                 return_type="continuation")
    assert same == [reply]
    # positions="generated": the prompt's activations (and so the first new token's logits' inputs
    # up to the last prompt position) are untouched; only the reply is steered.
    plain = chat_steerer.generate(conv, strength=0.0, max_new_tokens=1, return_type="tokens")
    gen_only = chat_steerer.generate(conv, strength=1.0, positions="generated", max_new_tokens=1, return_type="tokens")
    assert gen_only.tolist() == plain.tolist()


@pytest.mark.slow
def test_smollm2_chat_fit_and_generate(smollm2, one_thread):
    tok = smollm2.tokenizer
    r = render(tok, user("Hello there"))
    assert tok.decode(r.ids[r.pool_mask.bool()]) == "Hello there"
    assert r.ids[-4:].tolist() == tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    source = ["You are a worthless idiot.", "Shut up, moron.", "I hate you, loser.", "Go to hell, jerk."]
    target = ["You are a kind friend.", "Thank you, dear.", "I like you, buddy.", "Have a nice day."]
    steerer = HookedSteerer(smollm2, ["blocks.10.hook_mlp_out", "blocks.20.hook_mlp_out"])
    steerer.fit(source, target, chat=True, steps=3, progress=False)
    assert steerer.history_["final_loss"] < steerer.history_["identity_loss"]
    convs = [user("Tell me about my neighbour."), user("Hi!")]
    kw = dict(strength=1.0, positions="generated", max_new_tokens=6, return_type="tokens")
    batched = steerer.generate(convs, **kw)
    alone = steerer.generate(convs[1], use_past_kv_cache=False, **kw)[0]
    assert batched[1, -6:].tolist() == alone[-6:].tolist()
    reply = steerer.generate(convs[0], strength=1.0, max_new_tokens=8, return_type="continuation")
    assert isinstance(reply, str) and "assistant" not in reply


def test_concept_chat_forms_are_user_turns_of_the_same_prompts():
    from lineas_tl.concepts import get_concept

    c = get_concept("sentiment")
    (src, tgt), (csrc, ctgt) = c.split(4, seed=3), c.chat_split(4, seed=3)
    assert [m[0]["content"] for m in csrc] == [f"Continue this text: {p}" for p in src]
    assert [m[0]["role"] for m in ctgt] == ["user"] * 4
    assert c.chat_eval_prompts(instruction="")[0] == user(c.eval_prompts[0])
