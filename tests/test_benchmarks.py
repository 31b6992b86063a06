"""Building blocks of `benchmarks/compare_peers.py` and `benchmarks/gpu_peers.py` (`benchmarks/lib`: the peers' shapes,
the forced token count, the fast random init, the derived results and tables, and one tiny end-to-end run; no timing
assertions) and of `benchmarks/oracle_readout.py` and `benchmarks/stage_probes.py`."""

import copy
import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import compare_peers, gpu_peers
from benchmarks.lib import cpu_report, gpu_report
from benchmarks.lib.build import build_model
from benchmarks.lib.floors import measure_bandwidth, measure_matmul_rate
from benchmarks.lib.inputs import generate_exactly, make_inputs
from benchmarks.lib.measure import STORAGES, benchmark_model
from benchmarks.lib.peers import MODELS, PEERS, bcqlm_config, llava_config, smolvlm_config
from benchmarks.lib.report import jsonable, write_markdown
from benchmarks.lib.sizes import parameter_counts
from benchmarks.lib.system import run_isolated
from benchmarks.lib.timing import StepClock
from benchmarks.stage_probes import NEGATIVE_KINDS, caption_template, hard_negatives
from modeling_bcqlm import BcQLMConfig, BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.data.synthetic_shapes import (
    HELD_OUT_COMBINATIONS,
    MIN_IMAGE_SIZE,
    NUMBER_WORDS,
    format_caption,
    make_synthetic_captions,
    make_synthetic_scenes,
    make_synthetic_vqa,
    render_scene,
)
from modeling_bcqlm.testing.tiny_models import make_tiny_clip_teacher
from modeling_bcqlm.training import BcQLMVQACollator


def test_full_size_peers_have_the_requested_shapes():
    llava = llava_config()
    vision = llava.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (
        1024, 24, 16, 4096
    )
    assert (vision.image_size, vision.patch_size) == (336, 14)
    assert llava.vision_feature_layer == -2 and llava.vision_feature_select_strategy == "default"
    assert PEERS["llava"].image_tokens(llava) == llava.image_seq_length == 576
    # The LLaVA-style peer decodes with BcQLM's own (Llama-3.2-1B-shaped) decoder.
    ours = BcQLMConfig().text_config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "tie_word_embeddings"):
        assert getattr(llava.text_config, key) == getattr(ours, key), key
    assert llava.text_config.rope_parameters == ours.rope_parameters
    assert llava.image_token_id < ours.vocab_size  # LLaVA embeds its placeholders before replacing them

    smolvlm = smolvlm_config()
    vision, text = smolvlm.vision_config, smolvlm.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (
        768, 12, 12, 3072
    )
    assert (vision.image_size, vision.patch_size, smolvlm.scale_factor) == (512, 16, 4)
    assert PEERS["smolvlm"].image_tokens(smolvlm) == 64
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (576, 30, 9, 3)
    assert (text.intermediate_size, text.vocab_size, smolvlm.tie_word_embeddings) == (1536, 49280, False)
    assert PEERS["bcqlm"].image_tokens(bcqlm_config()) == 49


def test_full_size_parameter_counts_on_the_meta_device():
    counts = {name: parameter_counts(peer, build_model(peer, device="meta")) for name, peer in PEERS.items()}
    assert counts["bcqlm"]["total"] == pytest.approx(1302.65e6, rel=1e-3)
    assert counts["bcqlm"]["decoder"] == counts["llava"]["decoder"]  # one decoder shape, tied LM head counted once
    assert counts["llava"]["part:image tower"] == pytest.approx(303.5e6, rel=2e-3)  # CLIP ViT-L/14-336
    # SmolVLM-256M-Instruct's checkpoint is 513 MB of bf16: 256.5M parameters with an untied LM head.
    assert counts["smolvlm"]["total"] == pytest.approx(256.5e6, rel=2e-3)
    for count in counts.values():
        assert count["vision"] + count["decoder"] == count["total"]


@pytest.mark.parametrize("name", MODELS)
def test_parts_cover_the_model_and_count_a_tied_weight_once(name):
    peer = PEERS[name]
    model = build_model(peer, tiny=True, device="meta")
    counts = parameter_counts(peer, model)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert counts["total"] == sum(unique.values())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    parts = sum(count for key, count in counts.items() if key.startswith("part:"))
    # The tied LM head is the decoder's embedding table: counted in both parts, once in the decoder.
    assert counts["decoder"] == counts["part:decoder"] + (0 if tied else counts["part:lm_head"])
    outside = {"bcqlm": 1}.get(name, 0)  # BreezeCLIP's contrastive logit scale (training only), in no part
    assert parts - (counts["part:lm_head"] if tied else 0) == counts["total"] - outside


def test_floor_measurements_give_positive_rates():
    assert 0 < measure_matmul_rate(16, 32, 8, min_run_time=0.01) < float("inf")
    assert 0 < measure_bandwidth(64, 32, min_run_time=0.01, dtype=torch.bfloat16) < float("inf")


def test_committed_cpu_results_derive_and_render_to_the_committed_table():
    benchmarks = Path(compare_peers.__file__).parent
    committed = json.loads((benchmarks / "results" / "cpu_fp32.json").read_text())
    derived = cpu_report.derive(copy.deepcopy(committed))
    assert jsonable(derived) == committed
    readme = (benchmarks / "README.md").read_text()
    section = readme.split(cpu_report.RESULTS_START + "\n", 1)[1].split(cpu_report.RESULTS_END, 1)[0]
    assert cpu_report.render_markdown(derived) == section


@pytest.mark.parametrize("name", MODELS)
def test_tiny_models_take_their_image_tokens(name):
    model = build_model(PEERS[name], tiny=True)
    inputs = make_inputs(PEERS[name], model.config, question_length=7)
    text_config = model.config.get_text_config(decoder=True)
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert image_tokens == PEERS[name].image_tokens(model.config) > 1
    wrappers = 3 if name == "smolvlm" else 0  # <fake_token_around_image><global-img> ... <fake_token_around_image>
    assert inputs["input_ids"].shape == (1, 1 + wrappers + image_tokens + 7 + 5)
    text = inputs["input_ids"][0, 1 + wrappers + image_tokens :]
    assert ((text >= 0) & (text < text_config.vocab_size) & (text != model.config.image_token_id)).all()
    if name == "bcqlm":
        assert inputs["question_input_ids"].shape == (1, 7 + 2)
        assert inputs["question_input_ids"].max() < model.config.breezeclip_config.text_config.vocab_size
    if name == "llava":  # the same decoder config as the tiny BcQLM
        assert text_config.to_dict() == bcqlm_config(tiny=True).text_config.to_dict()
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], text_config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_forced_token_count_is_honoured(name, cache):
    model = build_model(PEERS[name], tiny=True)
    inputs = make_inputs(PEERS[name], model.config)
    prompt_length = inputs["input_ids"].shape[1]
    vocab_size = model.config.get_text_config(decoder=True).vocab_size
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=1, do_sample=False)[0, -1].item()
    # Every token but one is an end-of-sequence token, the greedy first token among them.
    spare = (first + 1) % vocab_size
    eos = [token for token in range(vocab_size) if token != spare]
    # Without the forced minimum, the first token ends generation ...
    with torch.no_grad():
        free = model.generate(**inputs, max_new_tokens=5, do_sample=False, eos_token_id=eos)
    assert free.shape[1] == prompt_length + 1
    # ... with it, exactly N tokens come out.
    forced = generate_exactly(model, inputs, 5, cache_implementation=cache, eos_token_id=eos)
    assert forced.shape == (1, prompt_length + 5)
    assert (forced[0, prompt_length:] == spare).all()
    clock = StepClock()
    generate_exactly(model, inputs, 4, cache_implementation=cache, logits_processor=[clock])
    assert len(clock.stamps) == 4 and len(clock.step_times()) == 3


def test_fast_random_init_keeps_ties_and_scales():
    model = build_model(PEERS["bcqlm"], tiny=True)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    decoder = model.model.language_model
    assert torch.equal(decoder.norm.weight, torch.ones_like(decoder.norm.weight))
    assert torch.count_nonzero(decoder.layers[0].self_attn.q_proj.weight) > 0
    assert float(decoder.layers[0].mlp.down_proj.weight.detach().std()) == pytest.approx(128**-0.5, rel=0.1)
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    # The rotary frequencies (a non-persistent buffer) are the config's, not garbage.
    rotary = decoder.rotary_emb
    assert torch.isfinite(rotary.inv_freq).all() and rotary.inv_freq[0] == 1.0


def test_prefill_flops_split_and_derived_results(tmp_path):
    results = compare_peers.main(
        ["--tiny", "--in-process", "--repeats", "1", "--new-tokens", "3", "--cache", "dynamic", "--quiet-timeout", "0",
         "--profile", "bcqlm",
         "--output", str(tmp_path / "tiny.json"), "--markdown", "--readme", str(tmp_path / "README.md")]
    )
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert set(saved["models"]) == set(MODELS)
    for name, model in results["models"].items():
        flops = model["prefill_flops"]
        assert flops["decoder"] > 0 and flops["vision"] > 0 and flops["vision"] + flops["decoder"] == flops["total"]
        assert model["finite_logits"] and model["peak_rss_bytes"] > 0
        assert model["timings"]["dynamic"]["ttft_s"] > 0 and model["floors"]["decode_s_per_token"] > 0
        assert model["image_tokens"] == PEERS[name].image_tokens(PEERS[name].make_config(True))
    # Decoder FLOPs of BcQLM's prefill: at least 2 x (decoder layer parameters) x prompt tokens.
    ours = results["models"]["bcqlm"]
    layer_params = ours["parameters"]["decoder"] - ours["parameters"]["part:lm_head"]
    assert ours["prefill_flops"]["decoder"] >= 2 * layer_params * ours["prompt_tokens"]
    assert {"prefill", "generate"} <= set(ours["profile"]) and ours["profile"]["generate"]["top_ops"]
    quantization = results["quantization"]["loads"]
    assert quantization["nf4"]["footprint_bytes"] < quantization["int8"]["footprint_bytes"] < results["quantization"]["fp32_bytes"]
    assert quantization["nf4+bf16"]["embedding_dtype"] == "bfloat16" and quantization["nf4+bf16"]["breezeclip_dtype"] == "float32"
    assert set(results["targets"]) >= {"TTFT ours <= 0.15x LLaVA-style", "4-bit footprint <= 0.35x fp32"}

    # --markdown replaces its own section and keeps the rest of the README.
    readme = tmp_path / "README.md"
    assert readme.read_text().count("| parameters: total |") == 1
    readme.write_text("intro\n" + readme.read_text() + "footer\n")
    write_markdown("new table\n", readme, cpu_report.RESULTS_START, cpu_report.RESULTS_END)
    text = readme.read_text()
    assert text.count(cpu_report.RESULTS_START) == 1 and "new table" in text and "intro" in text and "footer" in text
    assert "| parameters: total |" not in text


def test_each_model_is_measured_in_its_own_process():
    result = run_isolated(
        benchmark_model, "smolvlm", tiny=True, new_tokens=2, repeats=1, cache_implementations=("dynamic",)
    )
    assert result["name"] == "smolvlm" and result["peak_rss_reset"] in (True, False)
    assert result["rss_before_build_bytes"] > 0 and result["peak_rss_bytes"] >= result["rss_after_build_bytes"] * 0.5


def test_oracle_object_tokens_encode_the_scene():
    from benchmarks.oracle_readout import IMAGE_SIZE, ONE_HOTS, oracle_object_tokens

    scene_json = make_synthetic_vqa(1, seed=3, image_size=IMAGE_SIZE, split="test")[0]["scene"]
    scene = json.loads(scene_json)
    tokens = oracle_object_tokens(scene_json, num_tokens=8)
    assert tokens.shape[0] == 8 and not tokens[len(scene) :].any()  # absent objects are zero tokens
    for token, obj in zip(tokens, scene):
        offset, decoded = 0, []
        for values in ONE_HOTS:
            assert token[offset : offset + len(values)].sum() == 1
            decoded.append(values[int(token[offset : offset + len(values)].argmax())])
            offset += len(values)
        assert decoded == [obj["colour"], obj["shape"], obj["size"]]
        assert token[offset:].tolist() == pytest.approx([obj["x"] / IMAGE_SIZE, obj["y"] / IMAGE_SIZE, 1.0])


@pytest.mark.parametrize("readout", ["bcqlm", "transformer"])
def test_oracle_readout_trains_and_reports_every_question_type(readout, tmp_path):
    from benchmarks.oracle_readout import main

    args = ["--readout", readout, "--train_images", "4", "--test_images", "4", "--steps", "3", "--eval_every", "2"]
    evaluations = main([*args, "--output", str(tmp_path / "r.json")])
    assert [evaluation["step"] for evaluation in evaluations] == [2, 3]
    assert json.loads((tmp_path / "r.json").read_text())["evaluations"] == evaluations
    kinds = set(make_synthetic_vqa(4, seed=0, image_size=128, split="test", held_out_fraction=0.0)["question_type"])
    assert set(evaluations[-1]) == {"step", "seconds", "loss", "overall", *kinds}
    assert all(0.0 <= evaluations[-1][kind] <= 100.0 for kind in [*kinds, "overall"])


def test_linear_object_embedding_composes_attribute_values():
    from benchmarks.oracle_readout import TransformerReadout, oracle_object_tokens

    def token(colour, shape):
        obj = {"colour": colour, "shape": shape, "size": "small", "x": 10, "y": 20}
        return oracle_object_tokens(json.dumps([obj]), num_tokens=1)

    with pytest.raises(ValueError, match="'mlp' or 'linear'"):
        TransformerReadout(vocab_size=10, num_answers=3, num_layers=1, object_embedding="Linear")
    for embedding, additive in (("linear", True), ("mlp", False)):
        objects = TransformerReadout(vocab_size=10, num_answers=3, num_layers=1, object_embedding=embedding).objects
        with torch.no_grad():
            # green triangle = green circle + red triangle - red circle, as a sum of per-value embeddings is
            composed = (
                objects(token("green", "circle")) + objects(token("red", "triangle")) - objects(token("red", "circle"))
            )
            assert torch.allclose(objects(token("green", "triangle")), composed, atol=1e-5) == additive, embedding


def test_oracle_accuracy_splits_held_out_combinations_by_type():
    from benchmarks.oracle_readout import accuracy_by_type

    class AnswersYes:
        def answer(self, rows):
            return ["yes"] * len(rows)

    rows = [
        {"question_type": "existence", "held_out": True, "answer": "yes"},
        {"question_type": "existence", "held_out": True, "answer": "no"},
        {"question_type": "existence", "held_out": False, "answer": "yes"},
        {"question_type": "comparison", "held_out": False, "answer": "no"},
    ]
    assert accuracy_by_type(AnswersYes(), rows, batch_size=3) == {
        "comparison": 0.0, "comparison, seen": 0.0, "existence": 66.7, "existence, held_out": 50.0,
        "existence, seen": 100.0, "held_out": 50.0, "overall": 50.0, "seen": 50.0,
    }  # fmt: skip
    seen_only = [{**row, "held_out": False} for row in rows]
    assert accuracy_by_type(AnswersYes(), seen_only) == {"comparison": 0.0, "existence": 66.7, "overall": 50.0}


def test_gpu_benchmark_path_on_the_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nkept\n")
    args = ["--device", "cpu", "--tiny", "--repeats", "1", "--new-tokens", "3", "--output", str(tmp_path / "r.json")]
    results = gpu_peers.main([*args, "--markdown", "--readme", str(readme)])
    # Timings too noisy to measure (a tiny model's decode under load) are written as null.
    assert json.loads((tmp_path / "r.json").read_text())["ratios"] == jsonable(results["ratios"])
    for name in MODELS:
        runs = results["models"][name]
        assert list(runs) == list(STORAGES)
        assert runs["bf16"]["quantized_linears"] == 0
        assert runs["int8"]["quantized_linears"] > 0 and runs["nf4"]["quantized_linears"] > 0
        assert runs["nf4"]["footprint_bytes"] < runs["int8"]["footprint_bytes"] < runs["bf16"]["footprint_bytes"]
        assert runs["bf16"]["ttft_vs_floor"] > 0 and runs["nf4"]["prefill_floor_s"] == runs["bf16"]["prefill_floor_s"]
    for name in ("llava", "smolvlm"):
        for storage, entry in results["ratios"][name].items():
            ours, peer = results["models"]["bcqlm"][storage], results["models"][name][storage]
            assert entry["ttft_ours_over_peer"] == pytest.approx(ours["timings"]["ttft_s"] / peer["timings"]["ttft_s"])
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and gpu_report.RESULTS_START in text
    assert text.count("| BcQLM (ours, default config) |") == 3 and text.count("| llava |") == 3


def test_gpu_benchmark_without_a_gpu_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit):
        gpu_peers.parse_args(["--device", "cuda"])
    assert "no CUDA device is visible" in capsys.readouterr().err


def _caption_phrases(caption: str) -> list[tuple[str, str, str]]:
    """The (size, colour, shape) of each object a synthetic caption names, left to right."""
    return re.findall(r"a (small|large) (\w+) (circle|square|triangle)", caption)


def test_stage_probe_scenes_are_those_of_the_datasets():
    scenes = make_synthetic_scenes(4, seed=2, split="test")
    assert [caption for _, caption in scenes] == make_synthetic_captions(4, seed=2, split="test")["caption"]
    vqa = make_synthetic_vqa(4, seed=2, split="test")
    image_by_scene = {scene_json: image for scene_json, image in zip(vqa["scene"], vqa["image"])}
    for scene, caption in scenes:
        image = image_by_scene[json.dumps([dataclasses.asdict(obj) for obj in scene])]
        assert np.array_equal(np.asarray(render_scene(scene)), np.asarray(image.convert("RGB")))
        assert format_caption(scene, caption_template(scene, caption)) == caption


def test_stage_probe_hard_negatives_change_exactly_one_thing():
    scenes, captions = map(list, zip(*make_synthetic_scenes(40, seed=1, split="test", held_out_fraction=0.5)))
    negatives = hard_negatives(scenes, captions, np.random.default_rng(0), MIN_IMAGE_SIZE, per_kind=2)
    assert set(negatives) == set(NEGATIVE_KINDS)
    for kind in ("colour", "shape", "size", "count"):  # every scene allows these
        assert sorted(index for index, _ in negatives[kind]) == sorted(2 * list(range(len(scenes))))
    swappable = [index for index, scene in enumerate(scenes) if len(set(_caption_phrases(captions[index]))) > 1]
    assert sorted({index for index, _ in negatives["swap"]}) == swappable
    for kind, pairs in negatives.items():
        for index, negative in pairs:
            if kind == "other scene":
                assert negative == captions[(index + 1) % len(captions)]
                continue
            true, changed = _caption_phrases(captions[index]), _caption_phrases(negative)
            assert changed != true
            # The template stays; the "{number}: " one names the new count.
            template = caption_template(scenes[index], captions[index])
            prefix = template.split("{")[0] or (NUMBER_WORDS[len(changed) - 1] + ":" if "{number}" in template else "")
            assert negative.startswith(prefix)
            if kind in ("colour", "shape", "size"):
                assert len(changed) == len(true)
                (old, new), = [(a, b) for a, b in zip(true, changed) if a != b]
                assert [position for position in range(3) if old[position] != new[position]] == [
                    ("size", "colour", "shape").index(kind)
                ]
                assert (new[2], new[1]) not in HELD_OUT_COMBINATIONS or kind == "size"  # no new held-out one
            elif kind == "count":
                longer, shorter = (true, changed) if len(true) > len(changed) else (changed, true)
                assert len(longer) == len(shorter) + 1
                assert any(longer[:i] + longer[i + 1 :] == shorter for i in range(len(longer)))
            else:  # swap: two neighbours trade places, nothing else changes
                first = next(i for i, (a, b) in enumerate(zip(true, changed)) if a != b)
                swapped = true[:first] + [true[first + 1], true[first]] + true[first + 2 :]
                assert changed == swapped


def test_stage_probe_cell_labels():
    from benchmarks.stage_probes import NONE, cell_labels
    from modeling_bcqlm.data.synthetic_shapes import SceneObject

    scene = [
        SceneObject("circle", "red", "small", 10, 10, 8),  # top left
        SceneObject("square", "blue", "large", 60, 20, 16),  # top right
        SceneObject("triangle", "green", "small", 20, 70, 8),  # bottom left, with the next one
        SceneObject("circle", "yellow", "small", 40, 90, 8),
    ]
    labels = cell_labels(scene, (2, 2), 96)
    assert labels["object"] == ["object", "object", None, NONE]
    assert labels["colour"] == ["red", "blue", None, NONE]
    assert labels["shape"] == ["circle", "square", None, NONE]
    assert labels["size"] == ["small", "large", None, NONE]


def test_teacher_window_zero_shot_scores_each_attribute_of_the_centred_object():
    from PIL import Image

    from benchmarks.stage_probes import window_zero_shot
    from modeling_bcqlm.data.synthetic_shapes import SceneObject

    class GuessesSmallRedCircle:
        """A teacher that embeds each text as its index and every window as "a small red circle"."""

        def embed_texts(self, texts):
            self.red_circle = texts.index("a small red circle")
            return torch.eye(len(texts))

        def embed_images(self, windows):
            assert len(windows) == 4 and windows[0].size == (48, 48)  # half the side around each cell of 2 x 2
            return torch.eye(30)[[self.red_circle] * len(windows)]

    scenes = [
        [SceneObject("circle", "red", "small", 10, 10, 8), SceneObject("square", "red", "large", 60, 20, 16)],
        [SceneObject("circle", "blue", "small", 70, 70, 8),  # and two centres in one cell, left out:
         SceneObject("circle", "red", "small", 10, 60, 8), SceneObject("circle", "red", "small", 30, 80, 8)],
    ]  # fmt: skip
    images = [Image.new("RGB", (96, 96), "white")] * 2
    result = window_zero_shot(GuessesSmallRedCircle(), images, scenes, (2, 2), 0.5)
    # Object cells: small red circle, large red square, small blue circle.
    assert result == {"cells": 3, "size": 2 / 3, "colour": 2 / 3, "shape": 2 / 3, "all": 1 / 3}


def test_teacher_space_scores_map_the_cells_back_and_read_them_with_the_teachers_captions():
    from benchmarks.stage_probes import COMBINATION_CAPTIONS, COMBINATIONS, teacher_space_scores
    from modeling_bcqlm.data.synthetic_shapes import SceneObject

    torch.manual_seed(0)
    captions = F.normalize(torch.randn(len(COMBINATIONS), 8), dim=-1)

    def caption(size, colour, shape):
        return captions[COMBINATION_CAPTIONS.index(f"a {size} {colour} {shape}")]

    purple_circle = SceneObject("circle", "purple", "small", 10, 10, 8)  # a held-out combination
    red_square = SceneObject("square", "red", "large", 60, 20, 16)
    blue_circle = SceneObject("circle", "blue", "small", 70, 70, 8)
    occupants = [[[purple_circle], [red_square], [], []], [[blue_circle, red_square], [], [], [blue_circle]]]
    # The teacher's window embeddings: each object's caption (scaled: they are not normalised), noise elsewhere.
    targets = torch.randn(2, 4, 8)
    targets[0, 0], targets[0, 1], targets[1, 3] = (3 * caption(*attributes) for attributes in (
        ("small", "purple", "circle"), ("large", "red", "square"), ("small", "blue", "circle")))  # fmt: skip
    flat = targets.flatten(0, 1)
    standardised = (targets - flat.mean(0)) / flat.std(0)  # what crop distillation trains the cells towards

    exact = teacher_space_scores(standardised, targets, occupants, captions)
    assert exact["cells"] == {"held_out": 1, "seen": 2}  # the cell of two centres is left out
    assert exact["cosine"]["held_out"] == pytest.approx(1.0) and exact["cosine"]["seen"] == pytest.approx(1.0)
    right = {"held_out": 1.0, "seen": 1.0}
    assert exact["zero_shot"] == {"stage 1": dict.fromkeys(("size", "colour", "shape"), right),
                                  "teacher": dict.fromkeys(("size", "colour", "shape"), right)}  # fmt: skip

    # A student whose purple circle's cell holds the teacher's small purple square instead.
    wrong = standardised.clone()
    wrong[0, 0] = (3 * caption("small", "purple", "square") - flat.mean(0)) / flat.std(0)
    scores = teacher_space_scores(wrong, targets, occupants, captions)
    assert scores["cosine"]["held_out"] < 0.99 and scores["cosine"]["seen"] == pytest.approx(1.0)
    assert scores["zero_shot"]["stage 1"]["shape"] == {"held_out": 0.0, "seen": 1.0}
    assert scores["zero_shot"]["stage 1"]["colour"] == right and scores["zero_shot"]["teacher"]["shape"] == right


def test_stage_probes_on_tiny_models(bcqlm_folder, tmp_path):
    from benchmarks.stage_probes import PROBE_ATTRIBUTES, main

    # A stage-1 folder as distillation writes it: the BreezeCLIP, its image processor and tokenizer.
    processor = BcQLMProcessor.from_pretrained(bcqlm_folder)
    breezeclip = BcQLMForConditionalGeneration.from_pretrained(bcqlm_folder).model.breezeclip
    teacher, teacher_processor = make_tiny_clip_teacher(projection_dim=breezeclip.config.projection_dim)
    for part in (teacher, teacher_processor):
        part.save_pretrained(tmp_path / "teacher")
    for part in (breezeclip, processor.image_processor, processor.question_tokenizer):
        part.save_pretrained(tmp_path / "breezeclip")
    args = ["--model", str(bcqlm_folder), "--teacher", str(tmp_path / "teacher"), "--breezeclip",
            str(tmp_path / "breezeclip"), "--train_scenes", "6", "--test_scenes", "4", "--negatives_per_kind", "2",
            "--probe_steps", "20", "--output", str(tmp_path / "probes.json")]  # fmt: skip
    results = main(args)
    assert json.loads((tmp_path / "probes.json").read_text()) == jsonable(results)

    assert set(results["retrieval"]) == {"bcqlm", "stage 1", "teacher"}
    windows = results["teacher_windows"]
    object_cells = results["probes"]["representations"]["cell pixels"]["colour"]["object_cells"]
    assert windows["cells"] == object_cells["test_cells"]  # the same cells as the probes' object cells
    assert all(0.0 <= windows[key] <= 1.0 for key in ("size", "colour", "shape", "all"))
    for entry in results["retrieval"].values():
        assert list(entry["kinds"]) == list(NEGATIVE_KINDS)
        for kind, values in entry["kinds"].items():
            assert values["pairs"] == {"swap": values["pairs"], "other scene": 4}.get(kind, 4 * 2)
            if values["pairs"]:
                assert 0.0 <= values["accuracy"] <= 1.0 and 0.0 <= values["ties"] <= 1.0
                assert values["identical_tokens"] <= values["ties"] + 1e-9  # the same ids score the same
        assert 0.0 <= entry["tokenizer"]["oov_word_rate"] <= 1.0
    # The tiny question vocabulary (sentences about cars and dogs) knows almost no caption word.
    assert results["retrieval"]["bcqlm"]["tokenizer"]["oov_word_rate"] > 0.5

    probes = results["probes"]
    assert probes["grid"] == [2, 2]  # 64 px, MobileViT's stride 32: the tiny model's 4 visual tokens
    assert probes["train_cells"] + probes["ambiguous_train_cells"] == 6 * 4
    assert probes["test_cells"] + probes["ambiguous_test_cells"] == 4 * 4
    assert set(probes["representations"]) == {
        "cell pixels", "tower cells", "visual tokens", "stage-1 tower cells", "stage-1 projected cells"
    }  # fmt: skip
    for entry in probes["representations"].values():
        assert entry["object"]["object_cells"] is None  # every object cell holds an object
        for attribute in PROBE_ATTRIBUTES:
            probe = entry[attribute]["all_cells"]
            assert probe["train_cells"] == probes["train_cells"] and probe["test_cells"] == probes["test_cells"]
            for probe in entry[attribute].values():
                assert probe is None or 0.0 <= probe["accuracy"] <= 1.0 and 0.0 <= probe["majority_baseline"] <= 1.0

    held_out = results["held_out_probes"]
    # (f) scores the cells (e) scores: the stage-1 cells against the teacher's windows, per group.
    space = results["teacher_space"]
    assert space["cells"] == held_out["test_cells"]
    assert set(space["zero_shot"]) == {"stage 1", "teacher"}
    for groups in (space["cosine"], *space["zero_shot"]["stage 1"].values(), *space["zero_shot"]["teacher"].values()):
        assert all(value is None or -1.0 <= value <= 1.0 for value in groups.values())
    assert set(held_out["fitted_on"]) == {"train split", "test split"}
    assert held_out["test_cells"]["held_out"] >= 1  # every scoring scene holds a held-out combination
    for entry in held_out["fitted_on"].values():
        for name in probes["representations"]:
            assert set(entry[name]) == {"size", "colour", "shape"}
            for groups in entry[name].values():
                assert all(value is None or 0.0 <= value <= 1.0 for value in groups.values())


def test_held_out_probes_score_held_out_combinations_apart(bcqlm_folder):
    from benchmarks.stage_probes import NONE, cell_labels, held_out_probes, scenes_only
    from modeling_bcqlm.data.synthetic_shapes import HELD_OUT_COMBINATIONS

    model = BcQLMForConditionalGeneration.from_pretrained(bcqlm_folder).eval()
    image_processor = BcQLMProcessor.from_pretrained(bcqlm_folder).image_processor
    test = scenes_only(30, 1, 96, 1.0)
    # The cells holding one object's centre, counted from the (separately tested) probe labels of the tiny 2 x 2 grid.
    labels = [cell_labels(scene, (2, 2), 96) for scene in test]
    pairs = [pair for cells in labels for pair in zip(cells["shape"], cells["colour"]) if pair[0] not in (None, NONE)]
    held_out = sum(pair in HELD_OUT_COMBINATIONS for pair in pairs)
    assert 0 < held_out < len(pairs)

    results = held_out_probes(model, image_processor, {"test split": scenes_only(80, 2, 96, 0.5)}, test, 96, 300)
    assert results["test_cells"] == {"held_out": held_out, "seen": len(pairs) - held_out}
    # Colour is in the cells' pixels whatever the shape: the probe reads it on held-out objects as on the others.
    colour = results["fitted_on"]["test split"]["cell pixels"]["colour"]
    assert colour["held_out"] > 0.6 and colour["seen"] > 0.6, colour


def test_cli_startup_times_fresh_processes_after_a_warm_up(tmp_path):
    from benchmarks.cli_startup import markdown, summary, wall_times

    marker = tmp_path / "runs"
    script = f"open({str(marker)!r}, 'a').write('x')"
    times = wall_times([sys.executable, "-c", script], repeats=2)
    assert marker.read_text() == "xxx"  # one untimed run, two timed ones
    assert len(times) == 2 and all(0 < seconds < 60 for seconds in times)
    entry = summary([3.0, 1.0, 2.0])
    assert (entry["median"], entry["min"], entry["max"]) == (2.0, 1.0, 3.0)
    assert markdown({"timings": {"bcqlm --help": entry}}).splitlines()[-1] == "| bcqlm --help | 2.00 (1.00-3.00) |"


def test_onnx_engine_benchmark_on_the_tiny_model(tmp_path):
    from benchmarks.onnx_engine import main

    args = ["--tiny", "--in_process", "--repeats", "1", "--new_tokens", "4", "--torch_dtypes", "float32",
            "--precisions", "fp32,int4", "--workdir", str(tmp_path), "--output", str(tmp_path / "onnx.json")]  # fmt: skip
    results = main(args)
    assert list(results["runs"]) == ["PyTorch float32", "onnxruntime fp32", "onnxruntime int4"]
    for run in results["runs"].values():
        assert run["ttft_s"] > 0 and run["decode_tokens_per_s"] > 0 and run["peak_rss_bytes"] > 0
    assert set(results["exports"]) == {"fp32", "int4"}
    assert results["exports"]["int4"]["decoder_bytes"] < results["exports"]["fp32"]["decoder_bytes"]
    assert json.loads((tmp_path / "onnx.json").read_text())["runs"].keys() == results["runs"].keys()
    for run in results["runs"].values():  # the one-token runs' parts lie within them: the rest is what is left over
        parts = run["ttft_parts_s"]
        assert list(parts) == ["image tower", "question encoder", "projections+adapter", "Q-GCAM", "decoder", "rest"]
        assert all(seconds >= 0 for seconds in parts.values()) and parts["image tower"] > 0 and parts["decoder"] > 0


def test_numpy_renderer_draws_the_generators_shapes_in_other_pixels():
    from benchmarks.lib.numpy_renderer import draw_scene
    from modeling_bcqlm.data.synthetic_shapes import COLOURS, generate_scene

    rows, columns = np.mgrid[:128, :128]
    for seed in range(12):
        scene = generate_scene(np.random.default_rng(seed), 128)
        own = np.asarray(render_scene(scene, 128)).astype(int)
        other = np.asarray(draw_scene(scene, 128, np.random.default_rng(seed))).astype(int)
        assert not np.array_equal(own[0, 0], other[0, 0])  # another background
        for obj in scene:
            near = np.hypot(columns - obj.x, rows - obj.y) <= obj.radius + 1
            own_mask = near & np.all(own == COLOURS[obj.colour], axis=-1)
            # The other image's pixels nearer this colour than its background.
            other_mask = near & (np.abs(other - COLOURS[obj.colour]).sum(-1) < np.abs(other - other[0, 0]).sum(-1))
            assert (own_mask & other_mask).sum() / (own_mask | other_mask).sum() > 0.85, (seed, obj)


def test_fine_tune_speed_times_each_phase_of_the_recipes_steps(tmp_path):
    from benchmarks.fine_tune_speed import PHASES, main

    output = tmp_path / "r.json"
    results = main(["--batch_sizes", "4,8", "--steps", "2", "--warmup", "1", "--threads", "1", "--output", str(output)])
    assert list(results["runs"]) == [4, 8]
    for batch_size, run in results["runs"].items():
        medians = run["median_s"]
        assert all(medians[phase] > 0 for phase in PHASES)
        parts = {key: value for key, value in medians.items() if key.startswith("forward: ")}
        assert {"forward: image tower", "forward: decoder"} <= set(parts) and sum(parts.values()) <= medians["forward"]
        assert run["questions_per_s"] == pytest.approx(batch_size / sum(medians[phase] for phase in PHASES), rel=0.5)
    assert json.loads(output.read_text())["runs"].keys() == {"4", "8"}

    # With the tower's features computed first, the steps do not run it.
    results = main(["--batch_sizes", "4", "--steps", "2", "--warmup", "1", "--threads", "1", "--precompute_vision_features"])
    medians = results["runs"][4]["median_s"]
    assert results["precompute_ms_per_question"] > 0 and medians["forward: image tower"] == 0
    assert medians["forward: question encoder"] > 0 and medians["forward: decoder"] > 0
    assert results["attn_implementation"] == "sdpa"
    results = main(
        ["--batch_sizes", "4", "--steps", "1", "--warmup", "1", "--threads", "1", "--attn_implementation", "eager"]
    )
    assert results["attn_implementation"] == "eager"


def test_tower_capacity_labels_cells_and_trains_the_tower(bcqlm_folder, tmp_path):
    from benchmarks.tower_capacity import cell_targets, main
    from modeling_bcqlm.data.synthetic_shapes import SceneObject

    # 128 px, 4 x 4 cells of 32 px: cell 0 holds a red circle, cell 7 (row 1, column 3) a blue square, cell 15 two
    # centres (no label), the rest nothing.
    scene = [
        SceneObject("circle", "red", "small", 10, 10, 8),
        SceneObject("square", "blue", "large", 100, 40, 16),
        SceneObject("triangle", "green", "small", 100, 100, 8),
        SceneObject("circle", "yellow", "small", 120, 120, 8),
    ]
    targets = cell_targets([scene], 128)
    expected = {"colour": {0: 0, 7: 2}, "shape": {0: 0, 7: 1}}  # COLOURS: red, green, blue, ...; SHAPES: circle, square
    for attribute, labels in expected.items():
        assert targets[attribute].tolist() == [[labels.get(cell, -100) for cell in range(16)]]

    args = ["--model", str(bcqlm_folder), "--image_sizes", "64,96", "--train_scenes", "8", "--test_scenes", "4",
            "--steps", "2", "--batch_size", "4", "--output", str(tmp_path / "capacity.json")]  # fmt: skip
    results = main(args)
    assert json.loads((tmp_path / "capacity.json").read_text()) == jsonable(results)
    scenes = [scene for scene, _ in make_synthetic_scenes(4, 0, 128, "test", 0.0)]
    labelled = int((cell_targets(scenes, 128)["colour"] != -100).sum())
    for run in results["runs"].values():
        assert len(run["losses"]) == 2 and all(np.isfinite(run["losses"]))
        assert run["test"]["colour"]["cells"] == run["test"]["shape"]["cells"] == labelled > 0
        for split in ("train", "test"):
            assert all(0.0 <= run[split][name]["accuracy"] <= 1.0 for name in ("colour", "shape"))
    # The tiny tower (stride 32) maps 64 px to 2 x 2 cells and 96 px to 3 x 3.
    assert [results["runs"][size]["feature_map"] for size in (64, 96)] == [[2, 2], [3, 3]]


def test_stage2_sweep_scores_exact_answers_under_teacher_forcing():
    from benchmarks.stage2_sweep import answers_correct

    # Vocabulary of 5; the answer is tokens 3, 4 at positions 2, 3 (position 0-1 the prompt, 4 padding).
    labels = torch.tensor([[-100, -100, 3, 4, -100]] * 3)
    logits = torch.zeros(3, 5, 5)
    logits[:, 1, 3] = logits[:, 2, 4] = 1.0  # each labelled token predicted one step before it
    logits[1, 2, 4], logits[1, 2, 0] = 0.0, 2.0  # row 1: the second answer token wrong
    logits[2, 0, 1] = logits[2, 3, 2] = 5.0  # row 2: wrong where nothing is labelled
    assert answers_correct(logits, labels).tolist() == [True, False, True]


def test_stage2_sweep_on_a_tiny_work_dir(bcqlm_folder, tmp_path):
    from benchmarks.stage2_sweep import ImageLastProcessor, main

    work = tmp_path / "work"
    work.mkdir()
    (work / "composed").symlink_to(bcqlm_folder)
    vqa = datasets.DatasetDict(
        {"train": make_synthetic_vqa(6, 0, 2, 96, "train"), "test": make_synthetic_vqa(3, 1, 2, 96, "test")}
    )
    vqa.save_to_disk(str(work / "vqa"))

    processor = BcQLMProcessor.from_pretrained(bcqlm_folder)
    image_id, tokenizer = processor.image_token_id, processor.tokenizer
    for prompt_processor, image_first in ((processor, True), (ImageLastProcessor(processor), False)):
        ids = BcQLMVQACollator(prompt_processor)(list(vqa["test"].select([0])))["input_ids"][0].tolist()
        image_positions = [index for index, token in enumerate(ids) if token == image_id]
        question_end = len(tokenizer("Question: " + vqa["test"][0]["question"], add_special_tokens=False)["input_ids"])
        start = image_positions[0]
        assert image_positions == list(range(start, start + processor.image_seq_length))
        assert start <= 1 if image_first else start >= question_end  # after the start token, or after the question

    results = main(["--work_dir", str(work), "--learning_rates", "1e-3", "--image_last", "--steps", "4",
                    "--eval_every", "2", "--batch_size", "4", "--train_eval_batches", "1", "--output",
                    str(tmp_path / "sweep.json")])  # fmt: skip
    assert json.loads((tmp_path / "sweep.json").read_text()) == results
    assert list(results) == ["image first, lr 0.001", "image last, lr 0.001"]
    for evaluations in results.values():
        assert [evaluation["step"] for evaluation in evaluations] == [2, 4]
        for evaluation in evaluations:
            combinations = {"held_out" if held_out else "seen" for held_out in vqa["test"]["held_out"]}
            assert set(evaluation["test"]) == {"all"} | set(vqa["test"]["question_type"]) | combinations
            assert all(0.0 <= value <= 100.0 for value in evaluation["test"].values())
            assert math.isfinite(evaluation["loss"])

    teacher, teacher_processor = make_tiny_clip_teacher()
    for part in (teacher, teacher_processor):
        part.save_pretrained(work / "teacher")
    for extras in (None, "teacher_centre"):
        classifier = main(["--work_dir", str(work), "--readout", "transformer", "--layers", "1", "--learning_rates",
                           "1e-3", "--steps", "2", "--eval_every", "2", "--batch_size", "4"]
                          + (["--cell_extras", extras] if extras else []))  # fmt: skip
        [evaluation] = classifier["transformer, lr 0.001"]
        assert evaluation["step"] == 2 and set(evaluation["test"]) >= {"all"} | set(vqa["test"]["question_type"])
    with pytest.raises(ValueError, match="--readout transformer"):
        main(["--work_dir", str(work), "--cell_extras", "centre", "--steps", "1"])


def test_stage2_sweep_oracle_cell_values_sit_on_each_centre_cell():
    from benchmarks.stage2_sweep import VALUES, oracle_cell_values

    scene = json.dumps([
        {"shape": "circle", "colour": "red", "size": "small", "x": 10, "y": 10, "radius": 8},  # top left
        {"shape": "triangle", "colour": "blue", "size": "large", "x": 30, "y": 70, "radius": 16},  # bottom left
    ])  # fmt: skip
    values = oracle_cell_values(scene, 2, 96)
    assert values.shape == (4, 1 + len(VALUES)) and not values[[1, 3]].any()
    for cell, named in ((0, {("size", "small"), ("colour", "red"), ("shape", "circle")}),
                        (2, {("size", "large"), ("colour", "blue"), ("shape", "triangle")})):  # fmt: skip
        assert values[cell, 0] == 1.0
        assert {VALUES[index] for index in values[cell, 1:].nonzero().flatten().tolist()} == named


def test_question_forms_name_each_template_family_and_split_yes_no_answers():
    from benchmarks.question_forms import TEMPLATE_FAMILIES, accuracy_by_form, question_form

    for question_type, families in TEMPLATE_FAMILIES.items():
        for form, templates in families.items():
            for template in templates:
                question = re.sub(r"\{\w+\}", "small red circle", template)
                assert question_form(question_type, question) == form, question
    rows = list(make_synthetic_vqa(40, seed=3, questions_per_image=5, image_size=128, split="train"))
    forms = {(row["question_type"], question_form(row["question_type"], row["question"])) for row in rows}
    assert ("comparison", "same colour") in forms and ("counting", "all") in forms
    with pytest.raises(ValueError, match="follows none of the generator's comparison templates"):
        question_form("comparison", "is the red circle prettier than the square?")

    rows = [
        {"question_type": "comparison", "question": "is the circle smaller than the square?", "answer": "yes"},
        {"question_type": "comparison", "question": "is the circle smaller than the red square?", "answer": "no"},
        {"question_type": "comparison", "question": "is the large circle smaller than the square?", "answer": "no"},
        {"question_type": "counting", "question": "how many circles are there?", "answer": "2"},
        {"question_type": "attribute", "question": "what colour is the circle?", "answer": "red"},
    ]
    results = accuracy_by_form(rows, ["yes", "yes", "no", "3", "red"])
    assert list(results) == ["attribute: colour", "counting: all", "comparison: smaller"]
    assert results["comparison: smaller"] == {"count": 3, "all": 2 / 3, "yes": 1.0, "no": 0.5}
    assert results["counting: all"] == {"count": 1, "all": 0.0}


def test_question_forms_command_scores_every_question_of_both_splits(tmp_path):
    from benchmarks.question_forms import main

    output = tmp_path / "forms.json"
    main(["--test_images", "4", "--training_images", "6", "--threads", "1", "--output", str(output)])
    written = json.loads(output.read_text())
    results = written["results"]
    assert sum(values["count"] for values in results["test"].values()) == 20
    assert sum(values["count"] for values in results["training questions"].values()) == 30
    comparisons = {
        key.removeprefix("comparison: "): values["count"]
        for key, values in results["test"].items()
        if key.startswith("comparison: ")
    }
    assert comparisons  # the 4 test images ask comparisons
    assert {form: values["count"] for form, values in written["comparisons read apart"].items()} == comparisons


def test_comparisons_read_apart_ask_each_objects_compared_attribute_and_compare_the_reads():
    from benchmarks.question_forms import read_apart_accuracy, read_apart_questions

    scene = json.dumps([
        {"shape": "circle", "colour": "green", "size": "small"},
        {"shape": "square", "colour": "green", "size": "large"},
        {"shape": "square", "colour": "red", "size": "small"},
    ])  # fmt: skip
    rows = [
        {"question": "are the circle and the large square the same colour?", "answer": "yes", "image": 0},
        {"question": "is the red object smaller than the green square?", "answer": "yes", "image": 1},
    ]
    rows = [row | {"scene": scene} for row in rows]
    assert [(question["image"], question["question"]) for question in read_apart_questions(rows)] == [
        (0, "what colour is the circle?"), (0, "what colour is the large square?"),
        (1, "what size is the red object?"), (1, "what size is the green square?"),
    ]  # fmt: skip
    # Reads both colours right but answers "no"; misreads the red square's size, and the reads then say "no".
    results = read_apart_accuracy(rows, ["no", "yes"], ["green", "green", "large", "large"])
    assert results["same colour"] == {
        "count": 1, "answered": 0.0, "both read": 1.0, "made from reads": 1.0, "answered, both read": 0.0
    }  # fmt: skip
    assert results["smaller"] == {"count": 1, "answered": 1.0, "both read": 0.0, "made from reads": 0.0}

    rows = [row for row in make_synthetic_vqa(60, 3, 5, 128, split="train") if row["question_type"] == "comparison"]
    truths = []  # each object's true compared attribute: its one object in the scene
    for row, question in zip([row for row in rows for _ in range(2)], read_apart_questions(rows)):
        name = question["question"].split(" the ", 1)[1][:-1]
        attribute = question["question"].split()[1]
        words = set(name.split()) - {"object", "shape"}
        [obj] = [obj for obj in json.loads(row["scene"]) if words <= {obj["size"], obj["colour"], obj["shape"]}]
        truths.append(obj[attribute])
    results = read_apart_accuracy(rows, [row["answer"] for row in rows], truths)
    assert len(results) == 5 and sum(values["count"] for values in results.values()) == len(rows)
    assert all(values["both read"] == values["made from reads"] == 1.0 for values in results.values())


REFERENCE_QUESTIONS = {
    "question": ["how many circles?"] * 3 + ["how many squares?"] * 4 + ["is there a red square?"],
    "answer": ["2", "2", "3", "4", "4", "4", "5", "no"],
    "question_type": ["counting"] * 7 + ["existence"],
}


def test_answer_prior_takes_each_questions_most_frequent_answer_else_its_types_else_all():
    from benchmarks.image_ablation import prior_answers

    rows = [
        {"question": "how many circles?", "question_type": "counting"},  # its own answer, not its type's "4"
        {"question": "how many green triangles?", "question_type": "counting"},  # never asked: its type's
        {"question": "is there a blue circle?", "question_type": "existence"},  # its type's, not the overall "4"
        {"question": "is the circle left of the square?", "question_type": "spatial"},  # type never asked: all's "4"
    ]
    assert prior_answers(datasets.Dataset.from_dict(REFERENCE_QUESTIONS), rows) == ["2", "4", "no", "4"]


def test_image_ablation_refuses_an_empty_prior_sample(capsys):
    from benchmarks.image_ablation import main

    with pytest.raises(SystemExit):
        main(["--prior_images", "0"])
    assert "--prior_images must be at least 1, got 0" in capsys.readouterr().err


def test_expected_chance_agreement_is_the_share_of_each_questions_answers_equal_to_its_truth():
    from benchmarks.image_ablation import expected_chance_agreement

    rows = [
        {"question": "how many circles?", "question_type": "counting", "answer": "3"},  # 1 of its 3 answers
        {"question": "how many squares?", "question_type": "counting", "answer": "4"},  # 3 of 4
        {"question": "how many green triangles?", "question_type": "counting", "answer": "2"},  # 2 of its type's 7
        {"question": "is there a red square?", "question_type": "existence", "answer": "yes"},  # 0 of 1
    ]
    reference = datasets.Dataset.from_dict(REFERENCE_QUESTIONS)
    result = expected_chance_agreement(reference, rows, own_answers=["2", "5", "2", "no"])
    assert result["per_type"] == pytest.approx({"counting": (1 / 3 + 3 / 4 + 2 / 7) / 3, "existence": 0.0})
    assert result["accuracy"] == pytest.approx((1 / 3 + 3 / 4 + 2 / 7) / 4)
    assert result["same_answer_as_own_scene"] == pytest.approx((2 / 3 + 1 / 4 + 2 / 7 + 1) / 4)


def test_reference_questions_come_from_scenes_drawn_as_the_test_split_but_none_of_its_own(tmp_path):
    from benchmarks.image_ablation import reference_questions
    from benchmarks.quantized_accuracy import default_test_split

    arguments = {"test_images": 3, "seed": 0, "questions_per_image": 5, "train_images": 10}
    (tmp_path / "training_results.json").write_text(json.dumps({"arguments": arguments}))
    test, reference = default_test_split(tmp_path), reference_questions(tmp_path, 4)
    assert not set(test["scene"]) & set(reference["scene"])
    assert len(set(reference["scene"])) == 4
    assert {question_id.split("-")[3] for question_id in reference["question_id"]} == {"3", "4", "5", "6"}
    assert all(question_id.startswith("synthetic-test-") for question_id in reference["question_id"])
