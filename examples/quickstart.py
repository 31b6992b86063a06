"""Answer a question about an image with BcQLM, through `AutoProcessor` and `AutoModel`.

    python examples/quickstart.py --image examples/images/shapes.png --question "how many green objects can you see?"
    python examples/quickstart.py --model path/or/hub-id --image photo.jpg --question "What is on the table?"

Without `--model` it uses the small BcQLM shipped with the package (`modeling_bcqlm.DEFAULT_MODEL`, trained on synthetic
shape scenes); `--model` loads any saved BcQLM, a folder or a Hub id.
"""

import argparse
import os

import torch
from transformers import AutoModel, AutoProcessor

from modeling_bcqlm import DEFAULT_MODEL


EXAMPLE_IMAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images", "shapes.png")


def answer(model_path: str, image: str, question: str, max_new_tokens: int = 20) -> str:
    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    inputs = processor(images=image, text=question, return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.post_process_image_text_to_text(generated)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="A saved BcQLM folder or Hub id (default: the shipped one).")
    parser.add_argument("--image", default=EXAMPLE_IMAGE, help="Path or URL of the image.")
    parser.add_argument("--question", default="can you see a large yellow triangle?")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()
    print(f"Question: {args.question}")
    print(f"Answer: {answer(args.model, args.image, args.question, args.max_new_tokens)}")


if __name__ == "__main__":
    main()
