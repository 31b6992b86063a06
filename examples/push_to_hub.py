"""Publish a BcQLM checkpoint on the Hugging Face Hub, as one commit.

    python examples/push_to_hub.py --model path/to/bcqlm --repo_id your-username/bcqlm [--private]
    python examples/push_to_hub.py --model path/to/bcqlm --dry_run --output_dir exported  # no network

The checkpoint (a folder or a Hub id) is loaded with the installed package's classes and saved into one folder by
`modeling_bcqlm.export.save_hub_folder`: the safetensors weights, `config.json` (with `auto_map` and the
`custom_pipelines` of both VQA tasks), the five code files, `generation_config.json`, the processor (image processor, decoder tokenizer, and the question tokenizer in
`question_tokenizer/`), the model card as `README.md` (its example Hub id replaced by `--repo_id`) and the image its
examples ask about (`--example_image`). The shipped model publishes with `--model modeling_bcqlm/default_model`. The folder is
then uploaded as a single commit, which also deletes the repository's files that the folder does not hold, so that an
older checkpoint's files never mix with the new ones. `--dry_run` writes the folder and uploads nothing.
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor
from modeling_bcqlm.export import save_hub_folder


MODEL_CARD = Path(__file__).resolve().parent.parent / "model_card.md"
# The image the model card's examples ask about, published beside it.
EXAMPLE_IMAGE = Path(__file__).resolve().parent / "images" / "shapes.png"
# The Hub id the model card's examples load; replaced by the published repository's id.
CARD_REPO_ID = "your-username/bcqlm"


def export(
    model: str,
    output_dir: str | os.PathLike,
    model_card: str | os.PathLike,
    repo_id: str | None,
    example_image: str | os.PathLike | None = EXAMPLE_IMAGE,
) -> None:
    """Write the folder to upload: model, code, generation config, processor, `README.md` and the card's image."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"--output_dir {output_dir} is not empty: its files would be published with the model.")
    save_hub_folder(BcQLMForConditionalGeneration.from_pretrained(model), BcQLMProcessor.from_pretrained(model), output_dir)
    card = Path(model_card).read_text(encoding="utf-8")
    if repo_id is not None:
        card = card.replace(CARD_REPO_ID, repo_id)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    if example_image:
        shutil.copyfile(example_image, output_dir / Path(example_image).name)


def upload(folder: str | os.PathLike, repo_id: str, private: bool, commit_message: str) -> str:
    """Create the repository if needed and make `folder` its content in one commit; return the commit's URL."""
    api = HfApi()
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_url.repo_id, folder_path=folder, commit_message=commit_message, delete_patterns="*"
    )
    return commit.commit_url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="The checkpoint to publish: a saved BcQLM folder or Hub id.")
    parser.add_argument("--repo_id", help="The Hub repository, `owner/name` (required unless --dry_run).")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--model_card", default=str(MODEL_CARD), help="Markdown file published as README.md.")
    parser.add_argument(
        "--example_image", default=str(EXAMPLE_IMAGE), help="Image published beside the card ('' for none)."
    )
    parser.add_argument("--output_dir", help="Empty folder to write the export to (default: a temporary folder).")
    parser.add_argument("--dry_run", action="store_true", help="Write the folder to --output_dir; upload nothing.")
    parser.add_argument("--commit_message", default="Upload BcQLM")
    args = parser.parse_args(argv)
    if args.dry_run and args.output_dir is None:
        parser.error("--dry_run needs --output_dir, the folder to write.")
    if not args.dry_run and args.repo_id is None:
        parser.error("--repo_id is required to upload (or pass --dry_run).")

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.output_dir or scratch
        export(args.model, folder, args.model_card, args.repo_id, args.example_image)
        if args.dry_run:
            print(f"Dry run: the folder to upload is {folder}")
        else:
            print(f"Published: {upload(folder, args.repo_id, args.private, args.commit_message)}")


if __name__ == "__main__":
    main()
