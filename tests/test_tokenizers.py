"""The tokenizers learned from a corpus (`modeling_bcqlm.data.tokenizers`)."""

from modeling_bcqlm.data.synthetic_shapes import make_synthetic_captions
from modeling_bcqlm.data.tokenizers import train_clip_tokenizer


def test_clip_tokenizer_learns_the_same_ids_and_merges_from_the_same_texts():
    captions = make_synthetic_captions(24, seed=0, image_size=96)["caption"]
    learned = {train_clip_tokenizer(captions).backend_tokenizer.to_str() for _ in range(8)}
    assert len(learned) == 1  # the trainer's own numbering changes from call to call
    tokenizer = train_clip_tokenizer(captions)
    assert sorted(tokenizer.get_vocab().values()) == list(range(len(tokenizer)))
    assert not any(tokenizer.unk_token in tokenizer.tokenize(caption) for caption in captions)
