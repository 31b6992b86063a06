"""
The `bcqlm` console command.

    bcqlm ask --image scene.png --question "how many shapes are there?"
    bcqlm ask --image https://example.com/photo.jpg --question "what colour is the car?" --model org/bcqlm --top_k 3

`ask` answers with BcQLM's visual-question-answering pipeline; the model defaults to the small BcQLM shipped with the
package (`modeling_bcqlm.DEFAULT_MODEL`, trained on synthetic shape scenes), and then says so once on stderr
(`--no_notice` or `BCQLM_NO_NOTICE=1` silences it).
"""

import argparse
import os
import sys


DEFAULT_MODEL_NOTICE = (
    "bcqlm: note: the bundled model knows only synthetic scenes of circles, squares and triangles in five colours on a "
    "plain background; about other images its answers mean nothing. Pass --model for another BcQLM "
    "(--no_notice or BCQLM_NO_NOTICE=1 hides this note)."
)


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="bcqlm", description="BcQLM visual question answering.")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="Answer a question about an image.")
    ask.add_argument("--image", required=True, help="Path or URL of the image.")
    ask.add_argument("--question", required=True, help="The question about the image.")
    ask.add_argument(
        "--model", help="Folder or Hub id of a BcQLM model (default: the small model shipped with the package)."
    )
    ask.add_argument("--top_k", type=int, default=1, help="How many answers to print, best first, with their scores.")
    ask.add_argument("--max_new_tokens", type=int, default=16, help="The longest answer, in decoder tokens.")
    ask.add_argument("--device", default="cpu", help="Where the model runs: 'cpu', 'cuda', 'cuda:1', ...")
    ask.add_argument("--trust_remote_code", action="store_true", help="Allow code from a Hub model repository.")
    ask.add_argument("--no_notice", action="store_true", help="Do not print the bundled model's note on stderr.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.top_k < 1:
        sys.exit("bcqlm: error: --top_k must be at least 1.")
    if not args.question.strip():
        sys.exit("bcqlm: error: --question is empty: write the question about the image.")

    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging

    from .. import DEFAULT_MODEL, BcQLMVisualQuestionAnsweringPipeline

    logging.disable_progress_bar()  # loading a model of a few MB needs none; the command prints the answer only

    model_path = args.model or DEFAULT_MODEL
    if args.model is None and not (args.no_notice or os.environ.get("BCQLM_NO_NOTICE", "") not in ("", "0")):
        print(DEFAULT_MODEL_NOTICE, file=sys.stderr)
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_path, trust_remote_code=args.trust_remote_code)
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=args.trust_remote_code)
        vqa = BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor, device=args.device)
        answers = vqa(image=args.image, question=args.question, top_k=args.top_k, max_new_tokens=args.max_new_tokens)
    except (OSError, ValueError) as error:  # a missing model or image, an unreadable file, a bad device
        sys.exit(f"bcqlm: error: {error}")
    if args.top_k == 1:
        print(answers[0]["answer"])
    else:
        for answer in answers:
            print(f"{answer['score']:.4f}\t{answer['answer']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
