import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForImageTextToText
from transformers.modeling_outputs import CausalLMOutputWithPast

from modeling_bcqlm import BcQLMForConditionalGeneration, BreezeCLIPModel
from modeling_bcqlm.modeling_bcqlm import BcQLMQGCAM
from modeling_bcqlm.testing.tiny_models import TINY_IMAGE_SIZE, tiny_bcqlm_config, tiny_breezeclip_config

from .helpers import redraw_weights


IMAGE_TOKEN_ID = 119
NUM_IMAGE_TOKENS = 4


def make_model(seed: int = 0, std: float | None = None, **config_kwargs) -> BcQLMForConditionalGeneration:
    """A tiny model; `std` re-draws every weight so that greedy decoding is not degenerate."""
    torch.manual_seed(seed)
    model = BcQLMForConditionalGeneration(tiny_bcqlm_config(**config_kwargs)).eval()
    if std is not None:
        redraw_weights(model, std)
    return model


def make_inputs(batch_size: int = 2, seed: int = 0, pad_question: bool = True) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 100, (batch_size, 10), generator=generator)
    input_ids[:, 1 : 1 + NUM_IMAGE_TOKENS] = IMAGE_TOKEN_ID
    question_input_ids = torch.randint(5, 100, (batch_size, 6), generator=generator)
    question_attention_mask = torch.ones_like(question_input_ids)
    if pad_question:
        question_input_ids[0, 4:] = 0
        question_attention_mask[0, 4:] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(batch_size, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=generator),
        "question_input_ids": question_input_ids,
        "question_attention_mask": question_attention_mask,
    }


# BreezeCLIP


def test_breezeclip_features_and_contrastive_loss():
    torch.manual_seed(0)
    model = BreezeCLIPModel(tiny_breezeclip_config()).eval()
    pixel_values = torch.randn(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    input_ids = torch.randint(5, 100, (3, 7))
    attention_mask = torch.ones_like(input_ids)

    image = model.get_image_features(pixel_values)
    text = model.get_text_features(input_ids, attention_mask)
    assert image.last_hidden_state.shape == (3, NUM_IMAGE_TOKENS, 24)
    assert image.pooler_output.shape == (3, 24)
    # The projection is linear and MobileViT pools by averaging: the pooled embedding is the mean patch feature.
    torch.testing.assert_close(image.pooler_output, image.last_hidden_state.mean(1), atol=1e-5, rtol=1e-5)
    assert text.last_hidden_state.shape == (3, 7, 24)
    torch.testing.assert_close(text.pooler_output, text.last_hidden_state[:, 0])

    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, return_loss=True)
    image_embeds = image.pooler_output / image.pooler_output.norm(dim=-1, keepdim=True)
    text_embeds = text.pooler_output / text.pooler_output.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out.image_embeds, image_embeds)
    logits = image_embeds @ text_embeds.t() / 0.07  # logit scale starts at log(1 / 0.07)
    torch.testing.assert_close(out.logits_per_image, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits_per_text, logits.t(), atol=1e-4, rtol=1e-4)
    targets = torch.arange(3)
    expected = (nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.t(), targets)) / 2
    torch.testing.assert_close(out.loss, expected, atol=1e-4, rtol=1e-4)
    assert model(input_ids=input_ids, pixel_values=pixel_values).loss is None


def test_breezeclip_loss_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = BreezeCLIPModel(tiny_breezeclip_config())
    batch = {"input_ids": torch.randint(5, 100, (4, 6)), "pixel_values": torch.randn(4, 3, 64, 64)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**batch, return_loss=True).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0]

    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, BreezeCLIPModel)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits_per_image, model(**batch).logits_per_image)


# Q-GCAM


class ReleasedDynamicGatedCrossAttention(nn.Module):
    """The released code's module as DESIGN.md states it, built from torch modules (the reference formula)."""

    def __init__(self, img_dim, text_dim, num_heads):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, img_dim)
        self.text_global_proj = nn.Linear(text_dim, img_dim)
        self.cross_attn = nn.MultiheadAttention(img_dim, num_heads, batch_first=True)
        self.gate_mlp = nn.Sequential(nn.Linear(2 * img_dim, img_dim), nn.ReLU(), nn.Linear(img_dim, 1), nn.Sigmoid())
        self.norm = nn.LayerNorm(img_dim)
        self.ffn = nn.Sequential(nn.Linear(img_dim, img_dim), nn.ReLU(), nn.Linear(img_dim, img_dim))

    def forward(self, img, text_tokens, text_global):
        t = self.text_proj(text_tokens)
        a, _ = self.cross_attn(query=img, key=t, value=t)
        g = self.text_global_proj(text_global)[:, None].expand_as(img)
        gate = self.gate_mlp(torch.cat([img, g], dim=-1))
        h = self.norm(img + gate * a)
        return self.norm(h + self.ffn(h))


def load_released_weights(qgcam: BcQLMQGCAM, released: ReleasedDynamicGatedCrossAttention) -> None:
    with torch.no_grad():
        q, k, v = released.cross_attn.in_proj_weight.chunk(3)
        qb, kb, vb = released.cross_attn.in_proj_bias.chunk(3)
        pairs = [
            (qgcam.question_proj, released.text_proj),
            (qgcam.question_global_proj, released.text_global_proj),
            (qgcam.out_proj, released.cross_attn.out_proj),
            (qgcam.gate_fc1, released.gate_mlp[0]),
            (qgcam.gate_fc2, released.gate_mlp[2]),
            (qgcam.norm, released.norm),
            (qgcam.ffn_fc1, released.ffn[0]),
            (qgcam.ffn_fc2, released.ffn[2]),
        ]
        for ours, theirs in pairs:
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        for proj, weight, bias in ((qgcam.q_proj, q, qb), (qgcam.k_proj, k, kb), (qgcam.v_proj, v, vb)):
            proj.weight.copy_(weight)
            proj.bias.copy_(bias)


def make_qgcam(seed=0, **qgcam_kwargs):
    torch.manual_seed(seed)
    config = tiny_bcqlm_config(qgcam_config={"num_attention_heads": 4, **qgcam_kwargs})
    qgcam = BcQLMQGCAM(config).eval()
    released = ReleasedDynamicGatedCrossAttention(32, 24, 4).eval()
    nn.init.normal_(released.cross_attn.in_proj_bias, std=0.1)
    load_released_weights(qgcam, released)
    return qgcam, released


def test_qgcam_matches_the_released_formula_without_padding():
    qgcam, released = make_qgcam()
    img, tokens, pooled = torch.randn(2, 5, 32), torch.randn(2, 7, 24), torch.randn(2, 24)
    expected = released(img, tokens, pooled)
    torch.testing.assert_close(qgcam(img, tokens, pooled), expected, atol=1e-5, rtol=1e-5)
    full_mask = torch.ones(2, 7, dtype=torch.long)
    torch.testing.assert_close(qgcam(img, tokens, pooled, full_mask), expected, atol=1e-5, rtol=1e-5)


def test_qgcam_attention_ignores_padded_question_tokens():
    qgcam, released = make_qgcam()
    img, tokens, pooled = torch.randn(1, 5, 32), torch.randn(1, 4, 24), torch.randn(1, 24)
    padded = torch.cat([tokens, 100 * torch.randn(1, 3, 24)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    torch.testing.assert_close(qgcam(img, padded, pooled, mask), released(img, tokens, pooled), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(qgcam(img, padded, pooled), released(img, tokens, pooled), atol=1e-3)


def test_qgcam_channel_gate_follows_the_pooled_question():
    torch.manual_seed(0)
    qgcam = BcQLMQGCAM(tiny_bcqlm_config(qgcam_config={"num_attention_heads": 4, "gate_type": "channel"})).eval()
    assert qgcam.gate_fc1.in_features == 32 and qgcam.gate_fc2.out_features == 32
    img, tokens, pooled = torch.randn(2, 5, 32), torch.randn(2, 7, 24), torch.randn(2, 24)
    with torch.no_grad():
        qgcam.gate_fc2.bias.fill_(-1e4)  # gate closed: the attended features are dropped
    q = qgcam.norm(img)
    expected = qgcam.norm(q + qgcam.ffn_fc2(torch.relu(qgcam.ffn_fc1(q))))
    torch.testing.assert_close(qgcam(img, tokens, pooled), expected, atol=1e-5, rtol=1e-5)


# BcQLM


def test_forward_shapes_and_loss():
    model = make_model()
    inputs = make_inputs()
    labels = inputs["input_ids"].clone()
    labels[:, :5] = -100
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (2, 10, 120)
    assert out.image_hidden_states.shape == (2, NUM_IMAGE_TOKENS, 32)
    shifted_logits, shifted_labels = out.logits[:, :-1].reshape(-1, 120), labels[:, 1:].reshape(-1)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(shifted_logits, shifted_labels))


def test_visual_features_fill_the_image_positions():
    model = make_model(std=0.2)
    inputs = make_inputs()
    out = model(**inputs, output_hidden_states=True)
    embeds = out.hidden_states[0]
    torch.testing.assert_close(embeds[:, 1 : 1 + NUM_IMAGE_TOKENS], out.image_hidden_states)
    text_embeds = model.get_input_embeddings()(inputs["input_ids"][:, 5:])
    torch.testing.assert_close(embeds[:, 5:], text_embeds)

    other_image = dict(inputs, pixel_values=torch.randn_like(inputs["pixel_values"]))
    assert not torch.allclose(model(**other_image).logits, out.logits, atol=1e-4)
    other_question = dict(inputs, question_input_ids=(inputs["question_input_ids"] + 7) % 100)
    assert not torch.allclose(model(**other_question).logits, out.logits, atol=1e-4)


@pytest.mark.parametrize("question_pooling", ["cls", "mean"])
def test_question_padding_does_not_change_the_answer(question_pooling):
    model = make_model(std=0.2, qgcam_config={"num_attention_heads": 4, "question_pooling": question_pooling})
    inputs = make_inputs(batch_size=1, pad_question=False)
    alone = model(**inputs).logits
    ids, mask, pad = inputs["question_input_ids"], inputs["question_attention_mask"], torch.zeros(1, 3, dtype=torch.long)
    right_padded = dict(inputs, question_input_ids=torch.cat([ids, pad], 1), question_attention_mask=torch.cat([mask, pad], 1))
    torch.testing.assert_close(model(**right_padded).logits, alone, atol=1e-5, rtol=1e-5)
    # A pipeline's generic collate pads every key on the decoder tokenizer's side: left.
    left_padded = dict(inputs, question_input_ids=torch.cat([pad, ids], 1), question_attention_mask=torch.cat([pad, mask], 1))
    torch.testing.assert_close(model(**left_padded).logits, alone, atol=1e-5, rtol=1e-5)


def test_image_token_outside_the_embedding_table():
    model = make_model(decoder_vocab_size=119, image_token_id=119)  # as `<image>` added to Llama-3's 128256 tokens
    out = model(**make_inputs())
    assert out.logits.shape == (2, 10, 119)


@pytest.mark.parametrize("vision_feature_mode, question_feature_mode", [("pooled", "pooled"), ("patch", "pooled")])
def test_released_code_shapes(vision_feature_mode, question_feature_mode):
    model = make_model(vision_feature_mode=vision_feature_mode, question_feature_mode=question_feature_mode)
    inputs = make_inputs()
    n = model.config.image_seq_length
    input_ids = inputs["input_ids"].clone()
    input_ids[:, 1 : 1 + NUM_IMAGE_TOKENS] = 50
    input_ids[:, 1 : 1 + n] = IMAGE_TOKEN_ID
    out = model(**dict(inputs, input_ids=input_ids))
    assert out.image_hidden_states.shape == (2, n, 32)


def test_greedy_generation_with_cache_equals_without_cache():
    model = make_model(std=0.3)
    inputs = make_inputs()
    inputs["attention_mask"][1, :1] = 0  # left padding
    with_cache = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    without_cache = model.generate(**inputs, max_new_tokens=12, do_sample=False, use_cache=False)
    assert with_cache.shape == (2, 22)
    assert torch.equal(with_cache, without_cache)
    assert len(set(with_cache[:, 10:].flatten().tolist())) > 2  # a non-degenerate continuation


def test_decoding_by_hand_with_the_returned_cache_matches_generate():
    """The cache comes back and goes in under the installed release's name (`cache` from 5.24, `past_key_values` before)."""
    (cache_name,) = [name for name in CausalLMOutputWithPast.__dataclass_fields__ if name in ("cache", "past_key_values")]
    model = make_model(std=0.3)
    inputs = make_inputs(batch_size=1)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        tokens, mask = [out.logits[:, -1].argmax(-1)], inputs["attention_mask"]
        for _ in range(4):
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            out = model(input_ids=tokens[-1][:, None], attention_mask=mask, **{cache_name: out[cache_name]})
            tokens.append(out.logits[:, -1].argmax(-1))
        # A generated `<image>` id after the prompt is a token, not a placeholder missing its image.
        model(input_ids=torch.tensor([[IMAGE_TOKEN_ID]]), **{cache_name: out[cache_name]})
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(torch.stack(tokens, dim=1), generated[:, inputs["input_ids"].shape[1] :])


def test_visual_features_are_computed_on_prefill_only(monkeypatch):
    model = make_model(std=0.3)
    calls = []
    original = model.model.get_image_features
    monkeypatch.setattr(model.model, "get_image_features", lambda pv: calls.append(pv.shape) or original(pv))
    question_calls = []
    original_question = model.model.get_question_features
    monkeypatch.setattr(
        model.model,
        "get_question_features",
        lambda *args: question_calls.append(1) or original_question(*args),
    )
    model.generate(**make_inputs(), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert calls == [(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)]
    assert question_calls == [1]


# Bad input


def test_placeholder_count_mismatch_is_reported():
    model = make_model()
    inputs = make_inputs()
    inputs["input_ids"][0, 1] = 50  # one `<image>` token too few in the first prompt
    with pytest.raises(ValueError, match=r"exactly 4 `<image>` tokens.*\[3, 4\]"):
        model(**inputs)


def test_more_images_than_prompts_is_reported():
    model = make_model()
    inputs = make_inputs()
    inputs["pixel_values"] = torch.cat([inputs["pixel_values"], inputs["pixel_values"][:1]])
    with pytest.raises(ValueError, match="3 images but 2 questions"):
        model(**inputs)


def test_placeholders_without_pixel_values_are_reported():
    model = make_model()
    inputs = make_inputs()
    inputs.pop("pixel_values")
    with pytest.raises(ValueError, match="no `pixel_values`"):
        model(**inputs)


def test_pixel_values_without_question_are_reported():
    model = make_model()
    inputs = make_inputs()
    inputs.pop("question_input_ids")
    with pytest.raises(ValueError, match="question_input_ids"):
        model(**inputs)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("pixel_values", torch.randn(3, 64, 64), r"pixel_values.*\(batch_size, 3, 64, 64\)"),
        ("pixel_values", torch.randn(2, 3, 32, 32), r"pixel_values.*\(2, 3, 32, 32\)"),
        ("pixel_values", torch.randn(2, 1, 64, 64), r"pixel_values"),
        ("input_ids", torch.randint(3, 100, (2, 1, 10)), r"input_ids.*\(batch_size, sequence_length\)"),
        ("question_input_ids", torch.randint(3, 100, (2,)), r"question_input_ids.*\(batch_size, sequence_length\)"),
        ("question_attention_mask", torch.ones(2, 5, dtype=torch.long), r"attention mask of `question_input_ids`"),
    ],
)
def test_wrong_tensor_shapes_are_reported(key, value, message):
    model = make_model()
    inputs = make_inputs()
    inputs[key] = value
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_text_only_prompts_work():
    model = make_model()
    out = model(input_ids=torch.randint(3, 100, (2, 6)))
    assert out.logits.shape == (2, 6, 120) and out.image_hidden_states is None


# Auto classes


def test_auto_classes_map_to_the_generation_model(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        assert type(auto_class.from_pretrained(tmp_path)) is BcQLMForConditionalGeneration


def test_several_questions_about_one_image_reuse_its_features(monkeypatch):
    model = make_model(std=0.3)
    inputs = make_inputs(batch_size=3)
    inputs["pixel_values"] = inputs["pixel_values"][:1].expand(3, -1, -1, -1)
    expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)

    image_features = model.get_image_features(inputs.pop("pixel_values")[:1]).pooler_output
    calls = []
    monkeypatch.setattr(model.model, "get_image_features", lambda *args: calls.append(1))
    shared = model.generate(**inputs, image_features=image_features.expand(3, -1, -1), max_new_tokens=5, do_sample=False)
    assert torch.equal(shared, expected)
    assert calls == []  # the image tower did not run again


def test_image_features_of_the_wrong_shape_or_with_pixel_values_are_reported():
    model = make_model()
    inputs = make_inputs()
    with pytest.raises(ValueError, match=r"image_features.*\(batch_size, 4, 32\)"):
        model(**{k: v for k, v in inputs.items() if k != "pixel_values"}, image_features=torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="Pass one of `pixel_values`, `vision_features` or `image_features`"):
        model(**inputs, image_features=torch.randn(2, 4, 32))


def test_image_features_are_a_model_output_with_one_row_per_image():
    model = make_model(std=0.3)
    a, b = torch.randn(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    pixel_values = torch.stack([a, a, b])
    tower_batch_sizes = []
    tower = model.model.breezeclip.vision_model
    tower.conv_stem.register_forward_hook(lambda module, args, output: tower_batch_sizes.append(len(args[0])))
    outputs = model.get_image_features(pixel_values)
    assert tower_batch_sizes == [3]  # no hidden deduplication: batches hold each image once where they are built
    config = model.config
    assert outputs.pooler_output.shape == (3, config.image_seq_length, config.text_config.hidden_size)
    assert outputs.last_hidden_state.shape == (3, config.image_seq_length, config.breezeclip_config.projection_dim)
    one_by_one = torch.cat([model.get_image_features(image[None]).pooler_output for image in pixel_values])
    torch.testing.assert_close(outputs.pooler_output, one_by_one, atol=1e-4, rtol=1e-4)


def test_image_indices_are_checked_and_refused_by_generate():
    model = make_model()
    inputs = make_inputs()
    with pytest.raises(ValueError, match=r"`image_indices` must be a LongTensor of shape \(2,\)"):
        model(**inputs, image_indices=torch.tensor([0]))
    with pytest.raises(ValueError, match="one image per prompt"):
        model.generate(**inputs, image_indices=torch.tensor([0, 1]), max_new_tokens=2)
