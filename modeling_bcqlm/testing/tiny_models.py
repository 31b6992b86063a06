"""Build a tiny, randomly initialised BcQLM (model + processor) offline: tokenizers trained in memory on a few
sentences, hidden sizes <= 64. Used by the tests and benchmarks; the same code paths serve real checkpoints."""

from transformers import (
    BertTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    PreTrainedTokenizerFast,
)

from ..configuration_bcqlm import BcQLMConfig, BreezeCLIPConfig
from ..data.tokenizers import PAD, train_clip_tokenizer, train_decoder_tokenizer, word_level_question_tokenizer
from ..image_processing_bcqlm import BcQLMImageProcessor
from ..modeling_bcqlm import BcQLMForConditionalGeneration
from ..processing_bcqlm import BcQLMProcessor


TINY_IMAGE_SIZE = 64  # MobileViT downsamples by 32: a 2x2 map, 4 visual tokens

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


def make_decoder_tokenizer(pad_token: str | None = PAD) -> PreTrainedTokenizerFast:
    """A tiny Llama-3-like byte-level BPE tokenizer (vocab 400); `pad_token=None` leaves the padding token out."""
    return train_decoder_tokenizer(CORPUS, vocab_size=400, pad_token=pad_token)


def make_question_tokenizer() -> BertTokenizer:
    """A lower-case WordPiece `BertTokenizer` whose vocabulary is the corpus's words and punctuation."""
    return word_level_question_tokenizer(CORPUS)


def make_processor(image_size: int = TINY_IMAGE_SIZE, image_seq_length: int = 4) -> BcQLMProcessor:
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


def tiny_breezeclip_config(text_vocab_size: int = 100, **kwargs) -> BreezeCLIPConfig:
    vision_config = {
        "model_type": "mobilevit",
        "image_size": TINY_IMAGE_SIZE,
        "hidden_sizes": [16, 16, 16],
        "neck_hidden_sizes": [8, 8, 16, 16, 16, 16, 32],
        "num_attention_heads": 2,
        "expand_ratio": 2.0,
        "mlp_ratio": 2.0,
    }
    text_config = {
        "model_type": "mobilebert",
        "vocab_size": text_vocab_size,
        "hidden_size": 32,
        "embedding_size": 16,
        "intra_bottleneck_size": 16,
        "true_hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "num_feedforward_networks": 1,
        "max_position_embeddings": 64,
    }
    return BreezeCLIPConfig(vision_config=vision_config, text_config=text_config, projection_dim=24, **kwargs)


def tiny_bcqlm_config(
    decoder_vocab_size: int = 120, question_vocab_size: int = 100, image_token_id: int = 119, **kwargs
) -> BcQLMConfig:
    text_config = {
        "model_type": "llama",
        "vocab_size": decoder_vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": kwargs.pop("bos_token_id", 0),
        "eos_token_id": kwargs.pop("eos_token_id", 1),
        "pad_token_id": kwargs.pop("pad_token_id", 2),
        "tie_word_embeddings": True,
        **kwargs.pop("text_config", {}),
    }
    return BcQLMConfig(
        breezeclip_config=tiny_breezeclip_config(question_vocab_size),
        qgcam_config=kwargs.pop("qgcam_config", {"num_attention_heads": 4}),
        text_config=text_config,
        image_token_id=image_token_id,
        **kwargs,
    )


def make_tiny_bcqlm(**config_kwargs) -> tuple[BcQLMForConditionalGeneration, BcQLMProcessor]:
    """A tiny random BcQLM and the processor that matches it (same vocabularies, image size and image token)."""
    processor = make_processor()
    tokenizer = processor.tokenizer
    config = tiny_bcqlm_config(
        decoder_vocab_size=len(tokenizer) - 1,  # `<image>` lies outside the embedding table, as with Llama-3
        question_vocab_size=len(processor.question_tokenizer),
        image_token_id=processor.image_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    model = BcQLMForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def make_breezeclip_processing(image_size: int = TINY_IMAGE_SIZE) -> tuple[BcQLMImageProcessor, BertTokenizer]:
    """The image processor and text tokenizer of a tiny BreezeCLIP (the same ones a tiny BcQLM uses)."""
    processor = make_processor(image_size)
    return processor.image_processor, processor.question_tokenizer


def make_tiny_clip_teacher(projection_dim: int = 20, image_size: int = 32) -> tuple[CLIPModel, CLIPProcessor]:
    """A tiny random `CLIPModel` teacher and its `CLIPProcessor` (a byte-level CLIP tokenizer without merges)."""
    tokenizer = train_clip_tokenizer(model_max_length=32)
    vocab = tokenizer.get_vocab()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    return CLIPModel(config).eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
