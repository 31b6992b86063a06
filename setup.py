from setuptools import setup


INFERENCE = [
    "torch>=2.4",
    "transformers>=5.23,<6",
    "safetensors>=0.4",
    "huggingface_hub>=1.0",
    "accelerate>=1.0",
    "pillow>=10",
    "numpy>=1.24",
]
TRAIN = ["datasets>=3.0", "evaluate>=0.4", "peft>=0.13"]
QUANT = ["bitsandbytes>=0.45"]
# timm builds the released code's modules in the conversion parity tests; it needs torchvision, so the test command
# installs torch==2.14.1 with torchvision==0.29.1 first. The package itself needs neither.
TEST = ["pytest>=8", "timm>=1.0"]

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
    packages=["modeling_bcqlm"],
    # The small model trained by `examples/train_default_model.py` ships inside the package (`DEFAULT_MODEL`).
    package_data={"modeling_bcqlm": ["default_model/*", "default_model/question_tokenizer/*"]},
    entry_points={"console_scripts": ["bcqlm = modeling_bcqlm.cli_bcqlm:main"]},
    python_requires=">=3.10",
    install_requires=INFERENCE,
    extras_require={"train": TRAIN, "quant": QUANT, "test": TEST + TRAIN + QUANT},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
