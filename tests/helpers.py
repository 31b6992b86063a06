"""Small, offline building blocks for the tests: tokenizers, images and a processor."""

import re

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BertTokenizer, PreTrainedTokenizerFast

from modeling_bcqlm.image_processing_bcqlm import BcQLMImageProcessor
from modeling_bcqlm.processing_bcqlm import BcQLMProcessor

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"

CORPUS = [
    "Question: What colour is the car?\nAnswer: The car is red.",
    "Question: How many dogs are in the picture?\nAnswer: There are two dogs.",
    "Question: What is the man holding?\nAnswer: He is holding an umbrella.",
    "Question: Is it raining?\nAnswer: Yes, it is raining.",
    "Question: Where is the cat sitting?\nAnswer: The cat is sitting on the sofa.",
    "Question: What animal is on the grass?\nAnswer: A brown horse is on the grass.",
    "Question: What time of day is it?\nAnswer: It is night.",
    "Question: Which sport is being played?\nAnswer: They are playing tennis.",
    "Question: What is on the table?\nAnswer: A cup of coffee and a book.",
    "Question: Who is wearing a hat?\nAnswer: The woman on the left is wearing a blue hat.",
    "Question: What colour is the sky?\nAnswer: The sky is blue and clear.",
    "Question: How many people are there?\nAnswer: Three people are standing near the bus.",
    "Question: Is the door open or closed?\nAnswer: The door is closed.",
    "Question: What is the weather like?\nAnswer: It is sunny and warm.",
    "Question: What are the children doing?\nAnswer: The children are playing football in the park.",
]


def make_decoder_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny Llama-3-like byte-level BPE tokenizer (vocab 400) that prepends `<|begin_of_text|>`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=128,
        model_input_names=["input_ids", "attention_mask"],
    )


def make_question_tokenizer() -> BertTokenizer:
    """A lower-case WordPiece `BertTokenizer` whose vocabulary is the corpus's words and punctuation."""
    words = sorted({word for line in CORPUS for word in re.findall(r"\w+|[^\w\s]", line.lower())})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, model_max_length=32)


def make_image(size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A PIL image of random 8-bit pixels, `size` as (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def make_processor(image_size: int = 64, image_seq_length: int = 4) -> BcQLMProcessor:
    """A `BcQLMProcessor` with the tiny tokenizers and an image processor at `image_size` px."""
    image_processor = BcQLMImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return BcQLMProcessor(
        image_processor=image_processor,
        tokenizer=make_decoder_tokenizer(),
        question_tokenizer=make_question_tokenizer(),
        image_seq_length=image_seq_length,
    )


def make_model_and_processor(seed: int = 0, std: float = 0.3, **config_kwargs):
    """A tiny BcQLM matching `make_processor()`, its weights re-drawn with `std` so that greedy decoding varies."""
    import torch

    from modeling_bcqlm import BcQLMForConditionalGeneration

    from .tiny import tiny_bcqlm_config

    processor = make_processor()
    config = tiny_bcqlm_config(
        decoder_vocab_size=len(processor.tokenizer) - 1,  # `<image>` lies outside the table, as with Llama-3
        question_vocab_size=len(processor.question_tokenizer),
        image_token_id=processor.image_token_id,
        **config_kwargs,
    )
    config.text_config.bos_token_id = processor.tokenizer.bos_token_id
    config.text_config.eos_token_id = processor.tokenizer.eos_token_id
    config.text_config.pad_token_id = processor.tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = BcQLMForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, std)
        question_embeddings = model.model.breezeclip.text_model.embeddings.word_embeddings
        question_embeddings.weight[question_embeddings.padding_idx].zero_()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor
