"""examples/push_to_hub.py and model_card.md: the exported folder is complete, loads without the package and answers
like the model it was made from; the model card's snippets run against it; publishing is one `upload_folder` commit."""

import hashlib
import json
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard, RepoUrl

from benchmarks import count_parameters
from examples import push_to_hub
from modeling_bcqlm import BcQLMVisualQuestionAnsweringPipeline

from .helpers import make_image, run_python


ROOT = Path(__file__).resolve().parent.parent
CARD = (ROOT / "model_card.md").read_text()
README = (ROOT / "README.md").read_text()
REPO_ID = "someone/bcqlm-tiny"
CARD_IMAGE_URL = f"https://huggingface.co/{REPO_ID}/resolve/main/shapes.png"
COMMIT_URL = f"https://huggingface.co/{REPO_ID}/commit/0123abc"
QUESTION = "How many cats are there?"
MAX_NEW_TOKENS = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model_and_processor):
    """A tiny BcQLM saved the usual way: the checkpoint to publish."""
    folder = tmp_path_factory.mktemp("checkpoint")
    for part in model_and_processor:
        part.save_pretrained(folder)
    return folder


def forbidden_hub_api():
    raise AssertionError("a dry run must not touch the Hub")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint):
    output_dir = tmp_path_factory.mktemp("export") / "bcqlm"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(push_to_hub, "HfApi", forbidden_hub_api)
        push_to_hub.main(
            ["--model", str(checkpoint), "--repo_id", REPO_ID, "--dry_run", "--output_dir", str(output_dir)]
        )
    return output_dir


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_dry_run_writes_a_complete_folder(exported):
    expected = {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
        "question_tokenizer/tokenizer.json",
        "question_tokenizer/tokenizer_config.json",
        "README.md",
        "shapes.png",
        "configuration_bcqlm.py",
        "modeling_bcqlm.py",
        "image_processing_bcqlm.py",
        "processing_bcqlm.py",
        "pipeline_bcqlm.py",
    }
    assert set(file_digests(exported)) == expected

    config = json.loads((exported / "config.json").read_text())
    model_class = "modeling_bcqlm.BcQLMForConditionalGeneration"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_bcqlm.BcQLMConfig",
        "AutoModel": model_class,
        "AutoModelForImageTextToText": model_class,
    }
    entry = {"impl": "pipeline_bcqlm.BcQLMVisualQuestionAnsweringPipeline", "pt": ["AutoModelForImageTextToText"]}
    assert config["custom_pipelines"] == {"visual-question-answering": entry, "vqa": entry}
    processor_config = json.loads((exported / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_bcqlm.BcQLMProcessor"}
    assert processor_config["image_processor"]["auto_map"]["AutoImageProcessor"] == (
        "image_processing_bcqlm.BcQLMImageProcessor"
    )
    generation_config = json.loads((exported / "generation_config.json").read_text())
    assert {key: generation_config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")} == {
        key: config["text_config"][key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    # The card's example Hub id becomes the repository's.
    readme = (exported / "README.md").read_text()
    assert readme == CARD.replace(push_to_hub.CARD_REPO_ID, REPO_ID) and push_to_hub.CARD_REPO_ID in CARD


def test_model_card_metadata_and_parameter_table(capsys):
    metadata = ModelCard(CARD).data
    assert metadata.library_name == "transformers"
    assert metadata.pipeline_tag == "visual-question-answering"
    assert metadata.license == "apache-2.0"
    assert {"bcqlm", "vision-language", "image-text-to-text"} <= set(metadata.tags)
    assert "arXiv 2509.08715" in CARD and "Xiang, Sike and Chen, Shuang and Atapour-Abarghouei, Amir" in CARD
    count_parameters.main([])
    assert capsys.readouterr().out.strip() in CARD


def test_upload_is_one_commit_of_the_dry_run_folder(monkeypatch, capsys, tmp_path, checkpoint, exported):
    calls = []

    class FakeHfApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, *, folder_path, **kwargs):
            calls.append(("upload_folder", file_digests(Path(folder_path)), kwargs))
            return SimpleNamespace(commit_url=COMMIT_URL)

    monkeypatch.setattr(push_to_hub, "HfApi", FakeHfApi)
    # README's command, with a local checkpoint and this test's repository id.
    [command] = [line for line in README.splitlines() if line.startswith("python examples/push_to_hub.py")]
    args = command.split()[2:]
    args[args.index("--model") + 1], args[args.index("--repo_id") + 1] = str(checkpoint), REPO_ID
    push_to_hub.main(args)
    [create_repo, upload_folder] = calls
    assert create_repo == ("create_repo", REPO_ID, {"private": True, "exist_ok": True})
    # The uploaded folder is the one the dry run writes, file for file.
    assert upload_folder[1] == file_digests(exported)
    assert upload_folder[2] == {"repo_id": REPO_ID, "commit_message": "Upload BcQLM", "delete_patterns": "*"}
    assert capsys.readouterr().out == f"Published: {COMMIT_URL}\n"

    with pytest.raises(SystemExit):
        push_to_hub.main(["--model", str(checkpoint)])  # no --repo_id
    with pytest.raises(SystemExit):
        push_to_hub.main(["--model", str(checkpoint), "--dry_run"])  # no --output_dir
    (tmp_path / "stale.txt").write_text("not part of the model")
    with pytest.raises(ValueError, match="is not empty"):
        push_to_hub.main(["--model", str(checkpoint), "--dry_run", "--output_dir", str(tmp_path)])
    assert len(calls) == 2


REMOTE_EXPORT = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

    folder, image_path, question, max_new_tokens, snippets_file, out_file = sys.argv[1:]
    max_new_tokens = int(max_new_tokens)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    for loaded in (config, processor, processor.image_processor):
        assert type(loaded).__module__.startswith("transformers_modules."), type(loaded).__module__
    inputs = processor(images=image_path, text=question, return_tensors="pt")
    results = {}
    for name, auto_class in (("auto_model", AutoModel), ("image_text_to_text_model", AutoModelForImageTextToText)):
        model = auto_class.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        results[name] = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False).tolist()
    for task in ("visual-question-answering", "vqa"):
        vqa = pipeline(task, model=folder, trust_remote_code=True)
        results[task] = vqa(image=image_path, question=[question, "Is it raining?"], max_new_tokens=max_new_tokens)
    chat = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    results["chat"] = chat(images=image_path, text=question, max_new_tokens=max_new_tokens, return_full_text=False)

    # The model card's snippets, in order, in one namespace.
    namespace = {}
    for snippet in json.load(open(snippets_file)):
        exec(snippet, namespace)
    json.dump(results, open(out_file, "w"))
    """
)


def test_export_loads_without_the_package_and_answers_alike(tmp_path, model_and_processor, exported):
    model, processor = model_and_processor
    image_path = tmp_path / "image.png"
    make_image(seed=4).save(image_path)
    snippets = re.findall(r"```python\n(.*?)```", (exported / "README.md").read_text(), re.DOTALL)
    assert len(snippets) == 4
    snippets = [
        snippet.replace(CARD_IMAGE_URL, str(image_path)).replace(REPO_ID, str(exported)) for snippet in snippets
    ]
    assert not any("://" in snippet for snippet in snippets)  # nothing to download
    (tmp_path / "snippets.json").write_text(json.dumps(snippets))

    result = run_python(
        "-c", REMOTE_EXPORT, exported, image_path, QUESTION, MAX_NEW_TOKENS, tmp_path / "snippets.json", tmp_path / "out",
        cwd=tmp_path, without_package=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads((tmp_path / "out").read_text())

    inputs = processor(images=str(image_path), text=QUESTION, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert remote["auto_model"] == remote["image_text_to_text_model"] == generated.tolist()
    vqa = BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor)
    expected = vqa(image=str(image_path), question=[QUESTION, "Is it raining?"], max_new_tokens=MAX_NEW_TOKENS)
    for task in ("visual-question-answering", "vqa"):
        assert [[r["answer"] for r in answers] for answers in remote[task]] == [[e["answer"]] for [e] in expected]
        scores = [r["score"] for [r] in remote[task]]
        assert scores == pytest.approx([e["score"] for [e] in expected], rel=1e-5)
    answer = processor.post_process_image_text_to_text(generated)[0]
    assert expected[0][0]["answer"] == answer
    assert remote["chat"] == [{"input_text": QUESTION, "generated_text": answer}]
