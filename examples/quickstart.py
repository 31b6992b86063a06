"""Answer a question about an image with BcQLM.

    python examples/quickstart.py --image examples/images/shapes.png --question "What colour is the circle?"
    python examples/quickstart.py --model path/or/hub-id --image photo.jpg --question "What is on the table?"

`--model` loads a saved BcQLM (a folder or a Hub id) through `AutoProcessor` and `AutoModel`. Without it, until the
trained default model ships with the package, a tiny randomly initialised BcQLM is built, saved and loaded back the
same way: the whole pipeline runs, but the answer is noise.
"""

import argparse
import os
import sys
import tempfile

import torch
from transformers import AutoModel, AutoProcessor


EXAMPLE_IMAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images", "shapes.png")


def answer(model_path: str, image: str, question: str, max_new_tokens: int = 20) -> str:
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    model = AutoModel.from_pretrained(model_path, trust_remote_code=True).eval()
    inputs = processor(images=image, text=question, return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(generated, skip_special_tokens=True)[0]


def save_tiny_random_model(folder: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tiny_bcqlm import make_tiny_bcqlm

    torch.manual_seed(0)
    model, processor = make_tiny_bcqlm()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A saved BcQLM folder or Hub id (default: a tiny random model).")
    parser.add_argument("--image", default=EXAMPLE_IMAGE, help="Path or URL of the image.")
    parser.add_argument("--question", default="What colour is the circle?")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model_path = args.model
        if model_path is None:
            print("No --model given: using a tiny randomly initialised BcQLM (its answer is noise).", file=sys.stderr)
            model_path = os.path.join(scratch, "tiny-bcqlm")
            save_tiny_random_model(model_path)
        print(f"Question: {args.question}")
        print(f"Answer: {answer(model_path, args.image, args.question, args.max_new_tokens)}")


if __name__ == "__main__":
    main()
