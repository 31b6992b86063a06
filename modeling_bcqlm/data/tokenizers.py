"""Tokenizers learned in memory from a corpus, for models trained from nothing (the shipped model, tests, benchmarks):
a Llama-3-like byte-level BPE for the decoder, a word-level WordPiece vocabulary for the question encoder, and CLIP's
BPE for a teacher."""

import json
import re

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BertTokenizer, CLIPTokenizer, PreTrainedTokenizerFast


BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def train_decoder_tokenizer(
    texts: list[str], vocab_size: int, pad_token: str | None = PAD, model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """
    A byte-level BPE of `vocab_size` tokens learned on `texts` that prepends `<|begin_of_text|>`, as Llama-3's does;
    `pad_token=None` leaves the padding token out, as in Llama-3.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS] + ([pad_token] if pad_token else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=pad_token,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def word_level_question_tokenizer(
    texts: list[str], vocab_size: int | None = None, model_max_length: int = 32
) -> BertTokenizer:
    """
    A lower-case `BertTokenizer` whose vocabulary is BERT's special tokens and the words and punctuation of `texts`,
    padded with unused filler tokens up to `vocab_size` when given (a text tower's embedding table).
    """
    words = sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())})
    tokens = BERT_SPECIALS + words
    if vocab_size is not None:
        tokens += [f"[unused{index}]" for index in range(vocab_size - len(tokens))]
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, model_max_length=model_max_length)


def train_clip_tokenizer(
    texts: list[str] | None = None, vocab_size: int = 400, model_max_length: int = 64
) -> CLIPTokenizer:
    """
    A `CLIPTokenizer` whose BPE merges are learned on `texts` (whole words become tokens); without `texts`, the
    byte-level vocabulary alone, without merges (ids then lie within any CLIP vocabulary's size).
    """
    if texts is None:
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        tokens = CLIP_SPECIALS + alphabet + [character + "</w>" for character in alphabet]
        vocab = {token: index for index, token in enumerate(tokens)}
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
    reference = CLIPTokenizer()
    backend = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    backend.normalizer = reference.backend_tokenizer.normalizer
    backend.pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    # The trainer numbers the end-of-word characters in hash-map order, and breaks ties between equally frequent merges
    # by those numbers: listed first, in sorted order, they get the same ids (and merges) from run to run.
    pieces = [backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)) for text in texts]
    word_ends = sorted({word[-1] + "</w>" for words in pieces for word, _ in words})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CLIP_SPECIALS + word_ends,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)
