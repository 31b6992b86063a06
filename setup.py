from setuptools import find_packages, setup


# Every lower bound is a release that CI installs and tests (.ci/floors.txt, the second run of .ci/run).
INFERENCE = [
    "torch>=2.13.0",
    "transformers>=5.23.0,<6",
    "safetensors>=0.8.0",
    "huggingface_hub>=1.31.0",
    "accelerate>=1.3.0",
    "pillow>=10.0.1",
    "numpy>=2.0.0",
]
TRAIN = ["datasets>=3.0.0", "evaluate>=0.4.0", "peft>=0.13.0"]
# 0.49 is the first release whose CPU int8 and 4-bit layers run under torch 2.13 (0.47 and 0.48 crash).
QUANT = ["bitsandbytes>=0.49.0"]
# The ONNX Runtime engine (`bcqlm export`): onnxruntime-genai's model builder writes the decoder (it imports onnx_ir
# without declaring it); onnxruntime runs it.
ONNX = ["onnxruntime>=1.32.0", "onnxruntime-genai>=0.18.0", "onnx>=1.23.2", "onnx_ir>=1.1.0"]
# `bcqlm serve`: transformers' own server and its dependencies. transformers asks for openai>=1.98.0, but its server
# imports Responses API types that openai 1.99.0 brought. `bcqlm serve` runs on the server of 5.23 and 5.24 and on the
# one 5.25 rewrote (each model loads in a process of its own, through a `ModelLoader`); a minor release may rewrite it
# again, so the cap follows the newest release tested.
SERVE = ["transformers[serving]>=5.23.0,<5.26", "openai>=1.99.0"]
# `bcqlm demo`: the Gradio page (tested from 6.31.0: older 6.x releases cap huggingface_hub below 2).
DEMO = ["gradio>=6.31.0"]
# timm builds the released code's modules in the conversion parity tests; it needs torchvision, so the test command
# installs torch==2.14.1 with torchvision==0.29.1 first. The package itself needs neither.
# The demo's browser test drives Debian's Chromium (apt-get install chromium) with Playwright, which never downloads a
# browser of its own here (no `playwright install`).
TEST = ["pytest>=8.0.0", "timm>=1.0.3", "playwright>=1.49.0"]

setup(
    name="bcqlm",
    version="0.1.0",
    description=(
        "BcQLM: efficient vision-language understanding with distilled Q-gated cross-modal fusion, "
        "as a Hugging Face transformers model"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["modeling_bcqlm", "modeling_bcqlm.*"]),
    # The small model trained by `examples/train_default_model.py` ships inside the package (`DEFAULT_MODEL`).
    package_data={"modeling_bcqlm": ["default_model/*", "default_model/question_tokenizer/*"]},
    entry_points={"console_scripts": ["bcqlm = modeling_bcqlm.cli.main:main"]},
    python_requires=">=3.10",
    install_requires=INFERENCE,
    extras_require={
        "train": TRAIN,
        "quant": QUANT,
        "onnx": ONNX,
        "serve": SERVE,
        "demo": DEMO,
        "test": TEST + TRAIN + QUANT + ONNX + SERVE + DEMO,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
