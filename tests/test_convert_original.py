"""
`conversion/convert_original_bcqlm.py`: the released code's checkpoints as BcQLM folders.

The released code's modules are rebuilt here from their description (a timm MobileViT with global average pooling, a
transformers MobileBERT read at [CLS], linear heads, normalised embeddings; a linear visual adapter; the
`DynamicGatedCrossAttention` around `torch.nn.MultiheadAttention`), saved in the released checkpoint layout, converted,
and compared with the converted model in fp32.
"""

import subprocess
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoProcessor, BertTokenizer, LlamaConfig, MobileBertConfig, MobileBertModel

from modeling_bcqlm import BcQLMForConditionalGeneration, BreezeCLIPModel
from modeling_bcqlm.conversion import (
    SourceTensors,
    compose_bcqlm,
    convert_breezeclip,
    convert_original_bcqlm,
    convert_qgcam,
)

from .helpers import make_decoder_tokenizer, make_image, make_question_tokenizer, run_python, save_language_model


REPO = Path(__file__).resolve().parents[1]


IMAGE_SIZE = 64
PROJECTION_DIM = 16
DECODER_WIDTH = 32  # 8 heads of 4, as the released module's `num_heads=8`
TOLERANCE = 1e-5


class ReleasedImageEncoder(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, pixel_values):
        features = self.backbone(pixel_values)
        return self.gap(features).flatten(1) if features.ndim == 4 else features


class ReleasedBreezeCLIP(nn.Module):
    def __init__(self, vision_backbone: str, text_encoder: MobileBertModel):
        super().__init__()
        self.image_encoder = ReleasedImageEncoder(vision_backbone)
        self.text_encoder = text_encoder
        self.image_proj = nn.Linear(self.image_encoder.backbone.num_features, PROJECTION_DIM)
        self.text_proj = nn.Linear(text_encoder.config.hidden_size, PROJECTION_DIM)

    def forward(self, pixel_values, input_ids, attention_mask):
        image_embeds = F.normalize(self.image_proj(self.image_encoder(pixel_values)), dim=-1)
        cls_state = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return image_embeds, F.normalize(self.text_proj(cls_state), dim=-1)


class ReleasedVisualAdapter(nn.Module):
    def __init__(self):
        super().__init__()
        self.mapper = nn.Linear(PROJECTION_DIM, DECODER_WIDTH)

    def forward(self, features):
        return self.mapper(features)


class ReleasedDynamicGatedCrossAttention(nn.Module):
    def __init__(self, width: int = DECODER_WIDTH, text_width: int = PROJECTION_DIM, num_heads: int = 8):
        super().__init__()
        self.text_proj = nn.Linear(text_width, width) if text_width != width else nn.Identity()
        self.text_global_proj = nn.Linear(text_width, width) if text_width != width else nn.Identity()
        self.cross_attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.gate_mlp = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, 1), nn.Sigmoid())
        self.norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, image_features, text_tokens, text_global):
        text_tokens = self.text_proj(text_tokens)
        attended, _ = self.cross_attn(query=image_features, key=text_tokens, value=text_tokens)
        text_global = self.text_global_proj(text_global)[:, None].expand_as(image_features)
        gate = self.gate_mlp(torch.cat([image_features, text_global], dim=-1))
        hidden_states = self.norm(image_features + gate * attended)
        return self.norm(hidden_states + self.ffn(hidden_states))


def randomize_norms(module: nn.Module) -> None:
    """Give every norm non-trivial statistics and affine parameters, so that a wrong mapping shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for submodule in module.modules():
            if isinstance(submodule, (nn.BatchNorm2d, nn.LayerNorm)):
                submodule.weight.copy_(torch.rand(submodule.weight.shape, generator=generator) + 0.5)
                submodule.bias.copy_(torch.randn(submodule.bias.shape, generator=generator) * 0.1)
            if isinstance(submodule, nn.BatchNorm2d):
                submodule.running_mean.copy_(torch.randn(submodule.running_mean.shape, generator=generator) * 0.1)
                submodule.running_var.copy_(torch.rand(submodule.running_var.shape, generator=generator) + 0.5)


def save_text_backbone(folder: Path) -> MobileBertModel:
    """A tiny MobileBERT folder (config, tokenizer, weights), as the released `text_backbone` names one."""
    tokenizer = make_question_tokenizer()
    config = MobileBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        embedding_size=16,
        intra_bottleneck_size=16,
        true_hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_feedforward_networks=1,
        max_position_embeddings=32,
    )
    text_encoder = MobileBertModel(config).eval()  # `AutoModel.from_pretrained` in the released code: with a pooler
    text_encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return text_encoder


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The released stage-1 and stage-2 modules (mobilevit_xxs) and their checkpoint files."""
    folder = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    text_encoder = save_text_backbone(folder / "mobilebert")
    breezeclip = ReleasedBreezeCLIP("mobilevit_xxs", text_encoder).eval()
    randomize_norms(breezeclip)
    torch.save({"model": breezeclip.state_dict(), "best_val": 1.0, "epoch": 3}, folder / "breezeclip_best.pth")

    language_model = save_language_model(folder / "llama")
    with torch.no_grad():  # fine-tuned in stage 2: the checkpoint's decoder differs from the folder's weights
        for param in language_model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    adapter, dgca = ReleasedVisualAdapter().eval(), ReleasedDynamicGatedCrossAttention().eval()
    randomize_norms(dgca)
    torch.save(
        {
            "adapter": adapter.state_dict(),
            "dgca": dgca.state_dict(),
            "llama": language_model.state_dict(),
            "loss": 0.5,
            "epoch": 10,
        },
        folder / "bcqlm_epoch10.pth",
    )
    return {
        "folder": folder,
        "breezeclip": breezeclip,
        "adapter": adapter,
        "dgca": dgca,
        "language_model": language_model,
    }


def question_inputs(tokenizer, questions=("what colour is the car?", "how many dogs are there?")):
    return tokenizer(list(questions), padding=True, return_tensors="pt")


@pytest.mark.parametrize("variant", ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"])
def test_breezeclip_embeddings_match_the_released_model(tmp_path, variant):
    torch.manual_seed(0)
    text_encoder = save_text_backbone(tmp_path / "mobilebert")
    breezeclip = ReleasedBreezeCLIP(variant, text_encoder).eval()
    randomize_norms(breezeclip)
    torch.save({"model": breezeclip.state_dict(), "best_val": 1.0, "epoch": 1}, tmp_path / "breezeclip_best.pth")

    model, image_processor, tokenizer, unused = convert_breezeclip(
        str(tmp_path / "breezeclip_best.pth"), str(tmp_path / "mobilebert"), image_size=IMAGE_SIZE
    )
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    text = question_inputs(tokenizer, ["what colour is the car?", "a dog", "how many red shapes are there?"])
    with torch.no_grad():
        expected_image, expected_text = breezeclip(pixel_values, text.input_ids, text.attention_mask)
        outputs = model(input_ids=text.input_ids, pixel_values=pixel_values, attention_mask=text.attention_mask)
    assert (outputs.image_embeds - expected_image).abs().max() <= TOLERANCE
    assert (outputs.text_embeds - expected_text).abs().max() <= TOLERANCE
    # The image embeddings differ between images: the comparison is not between constants.
    assert (expected_image[0] - expected_image[1]).abs().max() > 1e-2
    # Everything but MobileBERT's pooler (never called by the released forward) is used, and the pooler is reported.
    assert sorted(unused) == [
        "breezeclip_best.pth: text_encoder.pooler.dense.bias",
        "breezeclip_best.pth: text_encoder.pooler.dense.weight",
    ]
    # The released image transform: Resize(256), CenterCrop(224) (scaled to the image size), ImageNet statistics.
    assert image_processor.crop_size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    assert image_processor.size == {"shortest_edge": round(IMAGE_SIZE * 256 / 224)}
    assert list(image_processor.image_mean) == [0.485, 0.456, 0.406] and list(image_processor.image_std) == [
        0.229,
        0.224,
        0.225,
    ]


def test_qgcam_matches_the_released_module_at_token_level(released):
    """Several image and question tokens, so that the split of the fused query/key/value projection matters."""

    from modeling_bcqlm.modeling_bcqlm import BcQLMQGCAM
    from modeling_bcqlm.testing.tiny_models import tiny_bcqlm_config

    config = tiny_bcqlm_config(qgcam_config={"num_attention_heads": 8})
    config.text_config.hidden_size, config.breezeclip_config.projection_dim = DECODER_WIDTH, PROJECTION_DIM
    qgcam = BcQLMQGCAM(config).eval()
    source = SourceTensors(released["dgca"].state_dict(), "dgca")
    qgcam.load_state_dict(convert_qgcam(source, DECODER_WIDTH))
    assert source.unused() == []

    image_tokens = torch.randn(2, 5, DECODER_WIDTH)
    question_tokens, question_global = torch.randn(2, 7, PROJECTION_DIM), torch.randn(2, PROJECTION_DIM)
    with torch.no_grad():
        expected = released["dgca"](image_tokens, question_tokens, question_global)
        fused = qgcam(image_tokens, question_tokens, question_global)
    assert (fused - expected).abs().max() <= TOLERANCE


def test_identity_text_projections_convert(released):
    """With the shared size equal to the decoder width the released module has no text projections (identities)."""

    from modeling_bcqlm.modeling_bcqlm import BcQLMQGCAM
    from modeling_bcqlm.testing.tiny_models import tiny_bcqlm_config

    torch.manual_seed(0)
    dgca = ReleasedDynamicGatedCrossAttention(width=DECODER_WIDTH, text_width=DECODER_WIDTH).eval()
    assert not any(key.startswith("text_proj") for key in dgca.state_dict())
    config = tiny_bcqlm_config(qgcam_config={"num_attention_heads": 8})
    config.text_config.hidden_size, config.breezeclip_config.projection_dim = DECODER_WIDTH, DECODER_WIDTH
    qgcam = BcQLMQGCAM(config).eval()
    qgcam.load_state_dict(convert_qgcam(SourceTensors(dgca.state_dict(), "dgca"), DECODER_WIDTH))
    inputs = torch.randn(2, 3, DECODER_WIDTH), torch.randn(2, 4, DECODER_WIDTH), torch.randn(2, DECODER_WIDTH)
    with torch.no_grad():
        assert (qgcam(*inputs) - dgca(*inputs)).abs().max() <= TOLERANCE


def test_converted_bcqlm_matches_the_released_stage_two(released):
    folder = released["folder"]
    model, processor, unused = convert_original_bcqlm(
        str(folder / "breezeclip_best.pth"),
        str(folder / "mobilebert"),
        str(folder / "bcqlm_epoch10.pth"),
        str(folder / "llama"),
        image_size=IMAGE_SIZE,
    )
    # The released form: one visual token, the question embedding as the only key.
    assert model.config.image_seq_length == 1 and model.config.question_feature_mode == "pooled"
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    question = question_inputs(processor.question_tokenizer)
    with torch.no_grad():
        image_embeds, text_embeds = released["breezeclip"](pixel_values, question.input_ids, question.attention_mask)
        expected = released["dgca"](released["adapter"](image_embeds[:, None]), text_embeds[:, None], text_embeds)
        image_features = model.model.get_image_features(pixel_values).pooler_output
        fused = model.model.get_fused_image_features(image_features, question.input_ids, question.attention_mask)
    assert fused.shape == expected.shape == (2, 1, DECODER_WIDTH)
    assert (fused - expected).abs().max() <= TOLERANCE

    # The decoder is the checkpoint's (not the LLaMA folder's): same logits on text alone.
    ids = processor.tokenizer("Question: what colour is the car?\nAnswer:", return_tensors="pt").input_ids
    with torch.no_grad():
        expected_logits = released["language_model"](input_ids=ids).logits
        logits = model(input_ids=ids).logits[..., : expected_logits.shape[-1]]
    assert (logits - expected_logits).abs().max() <= TOLERANCE
    # The tied lm_head is consumed by the tie; only MobileBERT's pooler is left over.
    assert sorted(unused) == [
        "breezeclip_best.pth: text_encoder.pooler.dense.bias",
        "breezeclip_best.pth: text_encoder.pooler.dense.weight",
    ]


def run_converter(*args: str) -> subprocess.CompletedProcess:
    return run_python(REPO / "conversion" / "convert_original_bcqlm.py", *args, cwd=REPO)


def test_command_line_writes_a_folder_that_auto_classes_load(released, tmp_path):
    """The script end to end, in a process where timm and torchvision cannot be imported."""
    folder = released["folder"]
    args = [
        "--breezeclip_checkpoint", str(folder / "breezeclip_best.pth"),
        "--text_backbone", str(folder / "mobilebert"),
        "--bcqlm_checkpoint", str(folder / "bcqlm_epoch10.pth"),
        "--language_model", str(folder / "llama"),
        "--image_size", str(IMAGE_SIZE),
        "--output_dir", str(tmp_path / "bcqlm"),
    ]  # fmt: skip
    script_path = REPO / "conversion" / "convert_original_bcqlm.py"
    script = (
        "import runpy, sys\n"
        "sys.modules['timm'] = sys.modules['torchvision'] = None  # as if not installed\n"
        f"sys.argv = [{str(script_path)!r}, *{args!r}]\n"
        f"runpy.run_path({str(script_path)!r}, run_name='__main__')\n"
    )
    completed = run_python("-c", script, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "text_encoder.pooler.dense.weight" in completed.stderr  # the unused tensors are reported

    model = AutoModel.from_pretrained(tmp_path / "bcqlm")
    processor = AutoProcessor.from_pretrained(tmp_path / "bcqlm")
    assert isinstance(model, BcQLMForConditionalGeneration) and model.config.normalize_features
    assert processor.prompt_template == "Question: {question}\nAnswer:"
    for name, tensor in released["adapter"].state_dict().items():
        assert torch.equal(model.model.visual_adapter.state_dict()[name.removeprefix("mapper.")], tensor)
    inputs = processor(images=make_image(), text="what colour is the car?", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_stage_one_alone_writes_a_breezeclip_folder(released, tmp_path):
    folder = released["folder"]
    completed = run_converter(
        "--breezeclip_checkpoint", str(folder / "breezeclip_best.pth"),
        "--text_backbone", str(folder / "mobilebert"),
        "--image_size", str(IMAGE_SIZE),
        "--output_dir", str(tmp_path / "breezeclip"),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    model = BreezeCLIPModel.from_pretrained(tmp_path / "breezeclip")
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = released["breezeclip"].image_proj(released["breezeclip"].image_encoder(pixel_values))
        embeds = model.get_image_features(pixel_values).pooler_output
    assert (embeds - expected).abs().max() <= TOLERANCE
    # The folder is what `compose_bcqlm.py` takes: its image processor and question tokenizer come along.
    composed, processor = compose_bcqlm(str(folder / "llama"), str(tmp_path / "breezeclip"), {"num_attention_heads": 8})
    assert processor.image_processor.crop_size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    question = "what colour is the car?"
    original_tokenizer = BertTokenizer.from_pretrained(folder / "mobilebert")
    assert processor.question_tokenizer(question).input_ids == original_tokenizer(question).input_ids
    assert torch.equal(composed.model.breezeclip.visual_projection.weight, model.visual_projection.weight)


def test_help():
    completed = run_converter("--help")
    assert completed.returncode == 0
    assert "--breezeclip_checkpoint" in completed.stdout and "--bcqlm_checkpoint" in completed.stdout


def test_a_checkpoint_with_another_image_backbone_is_refused(released, tmp_path):
    """A stage-1 checkpoint whose image encoder is a ResNet, not a MobileViT."""
    torch.manual_seed(0)
    breezeclip = ReleasedBreezeCLIP("resnet10t", MobileBertModel.from_pretrained(released["folder"] / "mobilebert"))
    torch.save({"model": breezeclip.state_dict(), "best_val": 1.0, "epoch": 1}, tmp_path / "resnet.pth")
    completed = run_converter(
        "--breezeclip_checkpoint", str(tmp_path / "resnet.pth"),
        "--text_backbone", str(released["folder"] / "mobilebert"),
        "--output_dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert completed.returncode == 1
    assert "error: " in completed.stderr and "not a timm MobileViT" in completed.stderr
    assert "Traceback" not in completed.stderr and not (tmp_path / "out").exists()


def test_a_text_backbone_of_another_shape_is_refused(released, tmp_path):
    other = MobileBertConfig.from_pretrained(released["folder"] / "mobilebert")
    other.num_hidden_layers = 1
    other.save_pretrained(tmp_path / "other")
    make_question_tokenizer().save_pretrained(tmp_path / "other")
    with pytest.raises(
        ValueError,
        match=r"does not match a BreezeCLIP built from --text_backbone.*unexpected text_model\.encoder\.layer\.1",
    ):
        convert_breezeclip(
            str(released["folder"] / "breezeclip_best.pth"), str(tmp_path / "other"), image_size=IMAGE_SIZE
        )


@pytest.mark.parametrize("kind", ["stage_two_as_stage_one", "not_a_dict", "pickled_object"])
def test_other_files_are_refused_with_a_clear_error(released, tmp_path, kind):
    path = tmp_path / "checkpoint.pth"
    if kind == "stage_two_as_stage_one":
        path = released["folder"] / "bcqlm_epoch10.pth"
        message = r"not a stage-1 BreezeCLIP checkpoint .* expected the keys \['model'\]"
    elif kind == "not_a_dict":
        torch.save([torch.zeros(2)], path)
        message = "not a stage-1 BreezeCLIP checkpoint"
    else:
        torch.save({"model": nn.Linear(2, 2)}, path)  # a pickled module: refused by weights_only=True
        message = "not unpickled"
    with pytest.raises(ValueError, match=message):
        convert_breezeclip(str(path), str(released["folder"] / "mobilebert"), image_size=IMAGE_SIZE)


def test_a_language_model_folder_of_another_shape_is_refused(released, tmp_path):
    folder = released["folder"]
    other = LlamaConfig.from_pretrained(folder / "llama")
    other.intermediate_size = 48
    other.save_pretrained(tmp_path / "llama")
    make_decoder_tokenizer().save_pretrained(tmp_path / "llama")
    with pytest.raises(
        ValueError,
        match=r"does not match the config of --language_model.*gate_proj\.weight: \(64, 32\) in the checkpoint, \(48, 32\) ",
    ):
        convert_original_bcqlm(
            str(folder / "breezeclip_best.pth"),
            str(folder / "mobilebert"),
            str(folder / "bcqlm_epoch10.pth"),
            str(tmp_path / "llama"),
            image_size=IMAGE_SIZE,
        )
