"""Processor of BcQLM: image processor, decoder tokenizer and question-encoder tokenizer."""

import numpy as np
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ImageInput, make_flat_list_of_images
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER, AddedToken, TextInput
from transformers.utils import logging


logger = logging.get_logger(__name__)

DEFAULT_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"

# User turns render as "<image>Question: {text}\nAnswer:" (one `<image>` per image block), assistant turns as
# " {text}{eos_token}\n"; the user turn already ends with the generation cue, so `add_generation_prompt` adds nothing.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set text = message['content'] -%}"
    "{%- set num_images = 0 -%}"
    "{%- else -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- set num_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<image>' * num_images + 'Question: ' + text + '\\nAnswer:' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ' ' + text + eos_token + '\\n' -}}"
    "{%- else -%}"
    "{{- raise_exception('BcQLM chats have only user and assistant turns, got a ' + message['role'] + ' turn.') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class BcQLMProcessor(ProcessorMixin):
    r"""
    Processor of BcQLM. It wraps the image processor, the decoder's tokenizer (Llama-3's) and the question encoder's
    tokenizer (MobileBERT's WordPiece), like [`InstructBlipProcessor`] wraps a Q-Former tokenizer.

    A bare question `q` becomes the prompt `"<image>" + prompt_template.format(question=q)` (without `<image>` when
    no image is given); text holding `<image>`, or already following `prompt_template`, is used as it is. The single
    `<image>` of a prompt is expanded into `image_seq_length` image tokens, as LLaVA does. The question encoder sees
    the question alone: the bare question, the one a prompt asks last, or `questions=` when given.

    Args:
        image_processor ([`BcQLMImageProcessor`]):
            The image processor.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The decoder's tokenizer. `image_token` is added to it as a special token when missing.
        question_tokenizer ([`PreTrainedTokenizerBase`]):
            The question encoder's tokenizer; saved in the `question_tokenizer` subfolder.
        image_seq_length (`int`, *optional*, defaults to 49):
            Number of image tokens per image (the model's `config.image_seq_length`).
        image_token (`str`, *optional*, defaults to `"<image>"`):
            Placeholder marking where the image goes in a prompt.
        prompt_template (`str`, *optional*, defaults to `"Question: {question}\nAnswer:"`):
            Prompt of a question; it holds `{question}` once, followed by the cue of the answer.
        chat_template (`str`, *optional*):
            Jinja template of `apply_chat_template`; defaults to one that renders turns with `prompt_template`'s
            default form.
    """

    text_kwargs = {"padding": True, "padding_side": "left", "return_token_type_ids": False}

    def __init__(
        self,
        image_processor,
        tokenizer,
        question_tokenizer,
        image_seq_length=49,
        image_token="<image>",
        prompt_template=DEFAULT_PROMPT_TEMPLATE,
        chat_template=None,
    ):
        if tokenizer is question_tokenizer:
            raise ValueError(
                "`tokenizer` and `question_tokenizer` are the same object; they are saved apart, so pass two objects "
                "(e.g. load the tokenizer twice)."
            )
        if not isinstance(image_seq_length, int) or image_seq_length <= 0:
            raise ValueError(f"`image_seq_length` must be a positive integer, got {image_seq_length!r}.")
        prefix, _, suffix = prompt_template.partition("{question}")
        if prompt_template.count("{question}") != 1 or not suffix:
            raise ValueError(
                f"`prompt_template` must hold `{{question}}` once, followed by the cue of the answer (e.g. "
                f"{DEFAULT_PROMPT_TEMPLATE!r}), got {prompt_template!r}."
            )
        if image_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(image_token, normalized=False, special=True)], special_tokens=True)
        # Batched generation needs prompts padded on the left, and pipelines' generic collate pads on this side.
        tokenizer.padding_side = "left"
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_seq_length = image_seq_length
        self.prompt_template = prompt_template
        self._prompt_prefix, self._prompt_suffix = prefix, suffix
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, question_tokenizer, chat_template=chat_template)

    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        questions: str | list[str] | None = None,
        vision_features=None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        r"""
        Prepare one image per prompt (or text alone) for the model.

        Args:
            images (`ImageInput`, *optional*):
                One image per prompt holding `<image>`: an image, a list of images or a list of one-image lists.
                Images may be PIL images, arrays, tensors or paths to image files.
            text (`str` or `list[str]`):
                Bare questions or full prompts.
            questions (`str` or `list[str]`, *optional*):
                The questions the question encoder sees, one per prompt; extracted from `text` when not given.
            vision_features (`torch.Tensor`, `np.ndarray` or a list of them, *optional*):
                Instead of `images`: the image tower's features of each prompt's image, `(image_seq_length,
                projection_dim)` each ([`~BcQLMModel.get_vision_features`]), e.g. to ask many questions about an image
                whose features were computed once. The prompts are the same as with the images.

        Returns:
            [`BatchFeature`]: `input_ids` and `attention_mask` `(batch_size, sequence_length)`, left-padded, with
            `image_seq_length` image tokens per image; `pixel_values` `(num_images, 3, height, width)` when images are
            given, `vision_features` `(num_images, image_seq_length, projection_dim)` when they are;
            `question_input_ids` and `question_attention_mask` `(batch_size, question_length)`, right-padded.
        """
        if text is None:
            raise ValueError(
                "BcQLM answers questions about images: pass `text` (a question or a prompt, or a list of them) "
                "along with `images`."
            )
        if images is not None and vision_features is not None:
            raise ValueError("Pass either `images` or their `vision_features`, not both.")
        with_images = images is not None or vision_features is not None
        prompts, extracted_questions = self._make_prompts(text, with_images=with_images)
        questions = self._check_questions(extracted_questions if questions is None else questions, len(prompts))
        if vision_features is not None:
            return self._prompts_for_vision_features(prompts, questions, vision_features, **kwargs)
        if images is not None:
            images = self.image_processor.fetch_images(images)
            self._check_images(images, prompts)
        else:
            for index, prompt in enumerate(prompts):
                if self.image_token in prompt:
                    raise ValueError(
                        f"Prompt {index} holds {self.image_token} but no images were passed: pass `images` (one per "
                        f"prompt holding {self.image_token}) or remove {self.image_token} from the prompt."
                    )

        inputs = super().__call__(images=images, text=prompts, **kwargs)
        if not kwargs.get("truncation"):
            self._check_prompt_lengths(inputs["attention_mask"])
        text_kwargs = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)["text_kwargs"]
        inputs.update(self._encode_questions(questions, return_tensors=text_kwargs.get("return_tensors")))
        return inputs

    def _prompts_for_vision_features(self, prompts, questions, vision_features, **kwargs) -> BatchFeature:
        """The inputs of `__call__` for prompts whose images come as the image tower's features."""
        features = [_as_float_array(feature) for feature in vision_features]
        num_with_image = sum(self.image_token in prompt for prompt in prompts)
        if len(features) != num_with_image:
            raise ValueError(
                f"Got the features of {len(features)} image(s) for {num_with_image} prompt(s) holding "
                f"{self.image_token}: pass one `vision_features` row per question."
            )
        for index, feature in enumerate(features):
            if len(feature.shape) != 2 or feature.shape[0] != self.image_seq_length:
                raise ValueError(
                    f"`vision_features[{index}]` has shape {tuple(feature.shape)}, but each image's features are "
                    f"(image_seq_length={self.image_seq_length}, projection_dim) as `get_vision_features` returns "
                    "them for one image."
                )
        text_kwargs = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)["text_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        image_tokens = self.image_token * self.image_seq_length
        inputs = self.tokenizer([prompt.replace(self.image_token, image_tokens) for prompt in prompts], **text_kwargs)
        if not text_kwargs.get("truncation"):
            self._check_prompt_lengths(inputs["attention_mask"])
        for index, (prompt, ids) in enumerate(zip(prompts, inputs["input_ids"])):
            kept, expected = list(ids).count(self.image_token_id), self.image_seq_length * (self.image_token in prompt)
            if kept != expected:
                raise ValueError(
                    f"Prompt {index} keeps {kept} of its {expected} image tokens after truncation: raise `max_length` "
                    "or leave `truncation` off."
                )
        if return_tensors is not None:
            features = np.stack(features)
        inputs = {**inputs, **self._encode_questions(questions), "vision_features": features}
        return BatchFeature(inputs, tensor_type=return_tensors)

    def _make_prompts(self, text, with_images: bool) -> tuple[list[str], list[str]]:
        """Turn bare questions into prompts; return the prompts and the questions they ask."""
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(sample, str) for sample in texts):
            raise ValueError(
                f"`text` must be a string or a non-empty list of strings (questions or prompts), got {text!r:.100}."
            )
        prompts, questions = [], []
        for index, sample in enumerate(texts):
            num_image_tokens = sample.count(self.image_token)
            if num_image_tokens > 1:
                raise ValueError(
                    f"Prompt {index} holds {num_image_tokens} {self.image_token} tokens, but BcQLM takes exactly one "
                    f"image per prompt: keep a single {self.image_token} and split the other images into prompts of "
                    "their own."
                )
            if num_image_tokens or self._follows_template(sample):
                prompts.append(sample)
                questions.append(self._extract_question(sample))
            else:
                question = sample.strip()
                prompt = self.prompt_template.format(question=question)
                prompts.append(self.image_token + prompt if with_images else prompt)
                questions.append(question)
        return prompts, questions

    def _follows_template(self, prompt: str) -> bool:
        return prompt.startswith(self._prompt_prefix) and prompt.endswith(self._prompt_suffix)

    def _find_last_question(self, text: str) -> tuple[int, int] | None:
        """Start and end of the question of the last `prefix ... suffix` turn of `text`, or `None`."""
        start = text.rfind(self._prompt_prefix)
        if start < 0:
            return None
        start += len(self._prompt_prefix)
        end = text.find(self._prompt_suffix, start)
        return (start, end) if end >= 0 else None

    def _extract_question(self, prompt: str) -> str:
        """The question of the prompt's last turn; the prompt without `<image>` if it does not follow the template."""
        text = prompt.replace(self.image_token, "")
        span = self._find_last_question(text)
        return (text[span[0] : span[1]] if span else text).strip()

    def _extract_answer(self, text: str) -> str:
        """The text after the last turn's answer cue; the whole text if it does not follow the template."""
        span = self._find_last_question(text)
        return (text[span[1] + len(self._prompt_suffix) :] if span else text).strip()

    @staticmethod
    def _check_questions(questions, num_prompts: int) -> list[str]:
        questions = [questions] if isinstance(questions, str) else questions
        if not isinstance(questions, (list, tuple)) or not all(isinstance(question, str) for question in questions):
            raise ValueError(f"`questions` must be a string or a list of strings, got {type(questions).__name__}.")
        if len(questions) != num_prompts:
            raise ValueError(
                f"Got {len(questions)} question(s) for {num_prompts} prompt(s): pass one question per prompt."
            )
        for index, question in enumerate(questions):
            if not question.strip():
                raise ValueError(
                    f"Question {index} is empty, but BcQLM answers a question about the image: write the question in "
                    "the text (or pass it as `questions=`)."
                )
        return list(questions)

    def _check_images(self, images: ImageInput, prompts: list[str]) -> None:
        """Check that every prompt holding `<image>` gets exactly one image and the others none."""
        has_image = [self.image_token in prompt for prompt in prompts]
        if isinstance(images, (list, tuple)) and images and all(isinstance(item, (list, tuple)) for item in images):
            if len(images) != len(prompts):
                raise ValueError(
                    f"Got {len(images)} lists of images for {len(prompts)} prompt(s): pass one list per prompt, or a "
                    "flat list of images."
                )
            for index, (prompt_images, expected) in enumerate(zip(images, has_image)):
                if len(prompt_images) != expected:
                    raise ValueError(
                        f"Prompt {index} {'holds' if expected else 'has no'} {self.image_token} but got "
                        f"{len(prompt_images)} image(s): BcQLM takes exactly one image per prompt holding "
                        f"{self.image_token}."
                    )
            return
        num_images = len(make_flat_list_of_images(images))
        if num_images != sum(has_image):
            raise ValueError(
                f"Got {num_images} image(s) for {sum(has_image)} prompt(s) holding {self.image_token}: BcQLM takes "
                "exactly one image per prompt. Pass one image per question."
            )

    def _check_prompt_lengths(self, attention_mask) -> None:
        """
        Refuse prompts longer than the decoder reads (the tokenizer's `model_max_length`, the decoder's positions),
        image tokens included: past it the decoder's answers mean nothing.
        """
        max_length = self.tokenizer.model_max_length
        if max_length >= VERY_LARGE_INTEGER:  # the tokenizer does not know its model's limit
            return
        for index, mask in enumerate(attention_mask):
            length = int(sum(mask))
            if length > max_length:
                raise ValueError(
                    f"Prompt {index} is {length} tokens long (the question, the prompt template and "
                    f"{self.image_seq_length} image tokens), but the decoder reads at most {max_length} "
                    f"(the tokenizer's `model_max_length`). Shorten the question by at least {length - max_length} "
                    "tokens; VQA questions are a sentence or two."
                )

    def _encode_questions(self, questions: list[str], return_tensors: str | None = None) -> dict:
        """Tokenize the questions for the question encoder, right-padded and truncated to its `model_max_length`."""
        max_length = self.question_tokenizer.model_max_length
        for index, ids in enumerate(self.question_tokenizer(questions, verbose=False)["input_ids"]):
            if len(ids) > max_length:
                logger.warning(
                    f"Question {index} is {len(ids)} tokens long for the question encoder: it was truncated to "
                    f"{max_length} tokens (the question tokenizer's `model_max_length`)."
                )
        encoding = self.question_tokenizer(
            questions,
            padding=True,
            truncation=True,
            max_length=max_length,
            padding_side="right",
            return_token_type_ids=False,
            return_tensors=return_tensors,
        )
        return {"question_input_ids": encoding["input_ids"], "question_attention_mask": encoding["attention_mask"]}

    def _process_images(self, images: ImageInput, **kwargs) -> tuple[dict, list[str]]:
        """
        Process each distinct image object once: prompts that pass the same image (several questions about one image)
        share its processing, and each still gets its own `pixel_values` row.
        """
        images = make_flat_list_of_images(images)
        distinct = list({id(image): image for image in images}.values())
        if len(distinct) == len(images):
            return super()._process_images(images, **kwargs)
        rows = {id(image): row for row, image in enumerate(distinct)}
        indices = [rows[id(image)] for image in images]
        processed, replacements = super()._process_images(distinct, **kwargs)
        for key, values in processed.items():
            processed[key] = [values[index] for index in indices] if isinstance(values, list) else values[indices]
        return processed, [replacements[index] for index in indices]

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs) -> list[str]:
        """
        Decode the output of `generate`, `(batch_size, sequence_length)` (or one sequence), into the answers: the text
        after the last turn's answer cue, the whole text where there is none (new tokens alone). `decode` and
        `batch_decode` return the full text, as the decoder's tokenizer does.
        """
        decoded = self.tokenizer.decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
        if isinstance(decoded, str):
            return self._extract_answer(decoded)
        return [self._extract_answer(text) for text in decoded]

    @property
    def model_input_names(self) -> list[str]:
        question_input_names = ["question_input_ids", "question_attention_mask"]
        return self.tokenizer.model_input_names + self.image_processor.model_input_names + question_input_names


def _as_float_array(feature) -> np.ndarray:
    """A float32 array of one image's features, given as a tensor, an array or nested lists."""
    if hasattr(feature, "detach"):
        return feature.detach().float().cpu().numpy()
    return np.asarray(feature, dtype=np.float32)


__all__ = ["BcQLMProcessor"]
