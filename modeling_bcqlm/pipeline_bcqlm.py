"""The VQA pipeline of BcQLM, with the classic pipeline's inputs and outputs (`[{"score": float, "answer": str}]`).

`transformers` 5 removed its built-in `visual-question-answering` task, and `pipeline()` refuses the task name unless
the model's config names a pipeline for it in `custom_pipelines`, as the folders written by
`modeling_bcqlm.export.save_hub_folder` do. The supported calls:

- `pipeline("visual-question-answering", model=hub_folder, trust_remote_code=True)`: this file, loaded from the folder;
- `BcQLMVisualQuestionAnsweringPipeline(model=model, processor=processor)` with the package installed, for any model;
- `pipeline("image-text-to-text", model=...)`: transformers' own task, generated text instead of scored answers.
"""

import torch
from transformers import GenerationConfig
from transformers.pipelines.base import Pipeline


VQA_TASKS = ("visual-question-answering", "vqa")


class BcQLMVisualQuestionAnsweringPipeline(Pipeline):
    """
    Visual question answering with BcQLM, with the inputs and outputs of the classic `transformers` pipeline.

    Answers are generated (greedy decoding by default; beam search with `top_k` beams when `top_k > 1`). The score of
    an answer is its sequence probability: the product of the probabilities of its generated tokens (the end-of-text
    token included when generated), under the logits processors of the generation config.

    Within one call the image tower runs once per distinct image: several questions about one image reuse its
    features (the model's `image_features` input), with the answers and scores of asking them one by one. With
    `batch_size > 1` the questions of a batch are generated together, left-padded by the processor.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> vqa = pipeline("visual-question-answering", model="your-username/bcqlm", trust_remote_code=True)
    >>> vqa(image="cat.png", question="Where is the cat sitting?", top_k=2)
    [{'score': 0.61, 'answer': 'on the sofa'}, {'score': 0.12, 'answer': 'on the table'}]
    >>> vqa(image="cat.png", question=["What colour is the cat?", "Is it asleep?"], batch_size=2)
    [[{'score': 0.83, 'answer': 'black'}], [{'score': 0.74, 'answer': 'yes'}]]
    ```

    Call arguments:
        image (`PIL.Image`, `str`, a list of them, a dict or a list of dicts):
            The image: a PIL image, a local path or an http(s) URL (fetched only when given). A dict
            `{"image": ..., "question": ...}` or a list of them (a batch) may be passed instead of `question`.
        question (`str` or `list[str]`):
            The question(s). A single question applies to every image, a single image to every question; lists of
            both must have the same length.
        top_k (`int`, *optional*, defaults to 1):
            Number of answers to return, sorted by score.
        max_new_tokens (`int`, *optional*):
            Maximum length of an answer (32 tokens unless the model's generation config sets one).
        timeout (`float`, *optional*):
            Seconds to wait for an image URL's server (to connect, and between bytes); 10 by default.
        batch_size (`int`, *optional*, defaults to 1):
            Number of questions generated together (also accepted when building the pipeline).
        generate_kwargs (`dict`, *optional*):
            Further arguments of `generate()`; generation parameters may also be passed directly.

    Returns:
        A list of `{"score": float, "answer": str}` for one input, a list of such lists for a batch.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=32)
    # `top_k` is the number of answers, not the sampling parameter.
    _non_generation_params = ("top_k",)
    # `(distinct pixel values, their image features)` of the last batch, reused within a call.
    _image_features_cache = None

    @classmethod
    def custom_pipelines(cls) -> dict:
        """The config's `custom_pipelines` entries that name this class for both VQA task names."""
        impl = f"{cls.__module__.split('.')[-1]}.{cls.__name__}"
        return {task: {"impl": impl, "pt": ["AutoModelForImageTextToText"]} for task in VQA_TASKS}

    def _sanitize_parameters(self, top_k=None, timeout=None, max_new_tokens=None, generate_kwargs=None, **kwargs):
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
            forward_params["top_k"] = top_k
            postprocess_params["top_k"] = top_k
        generate_kwargs = dict(generate_kwargs or {})
        generation_keys = {key for key in vars(GenerationConfig()) if not key.startswith("_")} | {"streamer"}
        for key in list(kwargs):
            if key in generation_keys:
                generate_kwargs[key] = kwargs.pop(key)
        if kwargs:
            raise ValueError(f"Unknown arguments of the visual-question-answering pipeline: {sorted(kwargs)}.")
        if max_new_tokens is not None:
            if "max_new_tokens" in generate_kwargs:
                raise ValueError("`max_new_tokens` is passed twice: directly and in `generate_kwargs`; pass it once.")
            generate_kwargs["max_new_tokens"] = max_new_tokens
        if generate_kwargs:
            forward_params["generate_kwargs"] = generate_kwargs
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, image=None, question=None, **kwargs):
        # Image features are reused within a call only: the model's weights may change between calls.
        self._image_features_cache = None
        if question is None:
            if image is None:
                raise ValueError(
                    "No image was given: pass `image=` (a PIL image, a local path or a URL) and `question=`, or "
                    '`{"image": ..., "question": ...}`.'
                )
            if isinstance(image, dict):
                return super().__call__(self._check_input(image, 0), **kwargs)
            if isinstance(image, (list, tuple)) and image and all(isinstance(item, dict) for item in image):
                return super().__call__([self._check_input(item, i) for i, item in enumerate(image)], **kwargs)
            raise ValueError(
                'No question was given: pass `question=` with `image=`, or `{"image": ..., "question": ...}` (or a '
                "list of such dicts)."
            )
        if isinstance(image, (list, tuple)) or isinstance(question, (list, tuple)):
            images = list(image) if isinstance(image, (list, tuple)) else None
            questions = list(question) if isinstance(question, (list, tuple)) else None
            if images is not None and questions is not None and len(images) != len(questions):
                raise ValueError(
                    f"Got {len(images)} image(s) and {len(questions)} question(s): pass lists of the same length, "
                    "or a single image or a single question for the whole batch."
                )
            size = len(images) if images is not None else len(questions)
            if size == 0:
                raise ValueError("Got an empty list of images or questions: pass at least one of each.")
            images = images if images is not None else [image] * size
            questions = questions if questions is not None else [question] * size
            batch = [
                self._check_input({"image": im, "question": q}, i) for i, (im, q) in enumerate(zip(images, questions))
            ]
            return super().__call__(batch, **kwargs)
        return super().__call__(self._check_input({"image": image, "question": question}, 0), **kwargs)

    @staticmethod
    def _check_input(inputs: dict, index: int) -> dict:
        """Check one `{"image": ..., "question": ...}` input; `index` names it in the errors of a batch."""
        if inputs.get("image") is None:
            raise ValueError(
                f"Input {index} has no image: pass `image` (a PIL image, a local path or a URL) with each question."
            )
        question = inputs.get("question")
        if not isinstance(question, str):
            raise ValueError(f"Input {index}: `question` must be a string, got {type(question).__name__}.")
        if not question.strip():
            raise ValueError(f"Input {index} has an empty question: BcQLM answers a question about the image.")
        return {"image": inputs["image"], "question": question}

    def preprocess(self, inputs, timeout=None):
        # The image processor reads paths and URLs as it does everywhere; its conversions (alpha onto white, 16-bit
        # rescaling) then apply to them as to images passed in memory.
        image = self.processor.image_processor.fetch_images(inputs["image"], timeout=timeout)
        # The processor runs in `_forward`, once per batch: one tokenizer and image-processor call for the batch.
        return {"image": image, "question": inputs["question"]}

    def _get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Features of `pixel_values` `(batch_size, 3, height, width)`, `(batch_size, image_seq_length, hidden_size)`,
        running the image tower on the distinct images not already seen by the previous batch of this call.
        """
        images, index = torch.unique(pixel_values, dim=0, return_inverse=True)
        cache = self._image_features_cache
        if cache is None or not torch.equal(cache[0], images):
            self._image_features_cache = cache = (images, self.model.get_image_features(images).pooler_output)
        return cache[1][index]

    def _forward(self, model_inputs, top_k=1, generate_kwargs=None):
        model_inputs = self.processor(images=model_inputs["image"], text=model_inputs["question"], return_tensors="pt")
        model_inputs = model_inputs.to(self.device, dtype=self.dtype)
        image_features = self._get_image_features(model_inputs.pop("pixel_values"))
        batch_size, prompt_length = model_inputs["input_ids"].shape
        overrides = {"output_scores": True, "return_dict_in_generate": True}
        if top_k > 1:
            num_beams = max(top_k, (generate_kwargs or {}).get("num_beams") or 1)
            overrides.update(num_beams=num_beams, num_return_sequences=top_k)
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, **overrides)
        outputs = self.model.generate(**model_inputs, image_features=image_features, **generate_kwargs)
        answer_ids = outputs.sequences[:, prompt_length:]
        # Log-probabilities of the chosen tokens; 0 where a finished beam was padded.
        transition_scores = self.model.compute_transition_scores(
            outputs.sequences, outputs.scores, outputs.get("beam_indices"), normalize_logits=True
        )
        # In a batch, answers that ended early are padded: only the tokens up to the end-of-text token count.
        eos_token_id = self._get_set_generation_params(generate_kwargs).get("eos_token_id")
        if eos_token_id is not None:
            is_eos = torch.isin(answer_ids, torch.as_tensor(eos_token_id, device=answer_ids.device))
            transition_scores = transition_scores.masked_fill(is_eos.cumsum(-1) - is_eos.long() > 0, 0.0)
        # `(batch_size, num_answers, ...)`: `Pipeline` splits batches along the first dimension.
        return {
            "answer_ids": answer_ids.reshape(batch_size, -1, answer_ids.shape[-1]),
            "log_probabilities": transition_scores.float().sum(-1).reshape(batch_size, -1),
        }

    def postprocess(self, model_outputs, top_k=1):
        answers = self.processor.tokenizer.batch_decode(model_outputs["answer_ids"][0], skip_special_tokens=True)
        scores = torch.exp(model_outputs["log_probabilities"][0]).tolist()
        results = [{"score": score, "answer": answer.strip()} for score, answer in zip(scores, answers)]
        return sorted(results, key=lambda result: result["score"], reverse=True)[:top_k]

    def save_pretrained(self, save_directory, **kwargs):
        """Save the model and the processor (`modeling_bcqlm.export.save_hub_folder` also adds this pipeline)."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


__all__ = ["BcQLMVisualQuestionAnsweringPipeline"]
