"""PyTorch BreezeCLIP and BcQLM models."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.clip.modeling_clip import CLIPOutput, image_text_contrastive_loss
from transformers.utils import logging

from .configuration_bcqlm import BcQLMConfig, BreezeCLIPConfig


logger = logging.get_logger(__name__)


@dataclass
class BcQLMModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(batch_size, image_seq_length, hidden_size)`, *optional*):
        Question-gated visual features (Q-GCAM output) scattered into the `<image>` positions.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class BcQLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(batch_size, image_seq_length, hidden_size)`, *optional*):
        Question-gated visual features (Q-GCAM output) scattered into the `<image>` positions.
    """

    image_hidden_states: torch.FloatTensor | None = None


def _cached_length(kwargs: dict) -> int:
    """Tokens already in the decoder's key/value cache, which `kwargs` carries to the decoder untouched."""
    # transformers 5.24 renamed the cache argument `past_key_values` to `cache`; each release passes its own name.
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return 0 if cache is None else cache.get_seq_length()


def _check_ids(name: str, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must have shape (batch_size, sequence_length), got {tuple(ids.shape)}.")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(
            f"The attention mask of `{name}` has shape {tuple(mask.shape)}; it must match `{name}` {tuple(ids.shape)}."
        )


class BreezeCLIPPreTrainedModel(PreTrainedModel):
    config: BreezeCLIPConfig
    base_model_prefix = "breezeclip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BreezeCLIPModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            # MobileViT's own init draws batch-norm scales from N(0, 0.02), so a freshly built tower outputs zeros in
            # eval mode. BreezeCLIP trains its image tower from scratch: use the usual conv-net init instead.
            for submodule in module.vision_model.modules():
                if isinstance(submodule, nn.BatchNorm2d):
                    init.ones_(submodule.weight)
                elif isinstance(submodule, nn.Conv2d):
                    init.kaiming_normal_(submodule.weight, mode="fan_out", nonlinearity="relu")


class BreezeCLIPModel(BreezeCLIPPreTrainedModel):
    """
    BreezeCLIP: a MobileViT image tower and a MobileBERT text tower with linear projection heads into a shared space,
    trained with a CLIP-style contrastive loss (and distilled from a CLIP teacher).
    """

    def __init__(self, config: BreezeCLIPConfig):
        super().__init__(config)
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.text_model = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        self.visual_projection = nn.Linear(config.vision_hidden_size, config.projection_dim)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_image_features(self, pixel_values: torch.FloatTensor) -> BaseModelOutputWithPooling:
        """
        Args:
            pixel_values: `(batch_size, num_channels, height, width)`.

        Returns:
            `BaseModelOutputWithPooling` whose `last_hidden_state` holds the projected patch features
            `(batch_size, num_patches, projection_dim)` (one per cell of the last feature map) and whose
            `pooler_output` holds the projected, unnormalised image embedding `(batch_size, projection_dim)`.
        """
        if pixel_values.dim() != 4:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, num_channels, height, width), got {tuple(pixel_values.shape)}."
            )
        pixel_values = pixel_values.to(self.vision_model.dtype)
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True)
        feature_map = vision_outputs.last_hidden_state  # (batch, channels, height, width)
        patch_features = feature_map.flatten(2).transpose(1, 2)
        return BaseModelOutputWithPooling(
            last_hidden_state=self.visual_projection(patch_features),
            pooler_output=self.visual_projection(vision_outputs.pooler_output),
            hidden_states=vision_outputs.hidden_states,
        )

    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """
        Args:
            input_ids: `(batch_size, sequence_length)` ids of the text tower's tokenizer.

        Returns:
            `BaseModelOutputWithPooling` whose `last_hidden_state` holds the projected token features
            `(batch_size, sequence_length, projection_dim)` and whose `pooler_output` holds the projected,
            unnormalised [CLS] embedding `(batch_size, projection_dim)`.
        """
        _check_ids("input_ids", input_ids, attention_mask)
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
        )
        token_features = self.text_projection(text_outputs.last_hidden_state)
        return BaseModelOutputWithPooling(
            last_hidden_state=token_features,
            pooler_output=token_features[:, 0],
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
    ) -> CLIPOutput:
        """
        Returns:
            `CLIPOutput` with L2-normalised `image_embeds`/`text_embeds` `(batch_size, projection_dim)`,
            `logits_per_image` `(image_batch_size, text_batch_size)`, `logits_per_text` (its transpose) and, with
            `return_loss=True`, the symmetric InfoNCE loss.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("BreezeCLIPModel.forward needs both `input_ids` and `pixel_values`.")
        vision_outputs = self.get_image_features(pixel_values)
        text_outputs = self.get_text_features(input_ids, attention_mask, token_type_ids)
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)

        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        logits_per_image = logits_per_text.t()
        loss = image_text_contrastive_loss(logits_per_text) if return_loss else None

        return CLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


class BcQLMQGCAM(nn.Module):
    """
    Question-gated cross-modal attention. Image tokens are the queries, question tokens the keys and values; a gate
    from the pooled question scales the attended features; a residual LayerNorm, an FFN and the same LayerNorm follow:

        a = MHA(img, q_tokens, q_tokens);  h = LN(img + g * a);  out = LN(h + FFN(h))

    with `g = sigmoid(W2 relu(W1 [img ; q_pooled]))` per image token (`gate_type="token"`, the released code) or
    `g = sigmoid(W2 relu(W1 q_pooled))` per channel (`gate_type="channel"`, the paper).
    """

    def __init__(self, config: BcQLMConfig):
        super().__init__()
        qgcam_config = config.qgcam_config
        hidden_size = config.text_config.hidden_size
        question_size = config.breezeclip_config.projection_dim
        self.num_heads = qgcam_config.num_attention_heads
        self.head_dim = hidden_size // self.num_heads
        self.gate_type = qgcam_config.gate_type
        self.dropout = qgcam_config.dropout

        self.question_proj = nn.Linear(question_size, hidden_size)
        self.question_global_proj = nn.Linear(question_size, hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

        gate_in, gate_out = (2 * hidden_size, 1) if self.gate_type == "token" else (hidden_size, hidden_size)
        self.gate_fc1 = nn.Linear(gate_in, hidden_size)
        self.gate_fc2 = nn.Linear(hidden_size, gate_out)
        self.act = ACT2FN["relu"]

        self.norm = nn.LayerNorm(hidden_size, eps=qgcam_config.layer_norm_eps)
        self.ffn_fc1 = nn.Linear(hidden_size, hidden_size)
        self.ffn_fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        image_features: torch.Tensor,
        question_features: torch.Tensor,
        question_pooled: torch.Tensor,
        question_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            image_features: `(batch_size, num_image_tokens, hidden_size)`, the adapted visual tokens.
            question_features: `(batch_size, question_length, question_size)`, question tokens in BreezeCLIP space.
            question_pooled: `(batch_size, question_size)`, the pooled question.
            question_attention_mask: `(batch_size, question_length)`, 1 for tokens, 0 for padding.

        Returns:
            `(batch_size, num_image_tokens, hidden_size)` fused visual tokens.
        """
        batch_size, num_image_tokens, hidden_size = image_features.shape
        question_tokens = self.question_proj(question_features)
        question_global = self.question_global_proj(question_pooled)

        query = self.q_proj(image_features).view(batch_size, num_image_tokens, self.num_heads, self.head_dim)
        key = self.k_proj(question_tokens).view(batch_size, -1, self.num_heads, self.head_dim)
        value = self.v_proj(question_tokens).view(batch_size, -1, self.num_heads, self.head_dim)
        attn_mask = None
        if question_attention_mask is not None:
            attn_mask = question_attention_mask[:, None, None, :].to(torch.bool)
        attended = F.scaled_dot_product_attention(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        attended = self.out_proj(attended.transpose(1, 2).reshape(batch_size, num_image_tokens, hidden_size))

        if self.gate_type == "token":
            gate_input = torch.cat([image_features, question_global[:, None].expand_as(image_features)], dim=-1)
        else:
            gate_input = question_global[:, None]
        gate = torch.sigmoid(self.gate_fc2(self.act(self.gate_fc1(gate_input))))

        attended = F.dropout(attended, p=self.dropout, training=self.training)
        hidden_states = self.norm(image_features + gate * attended)
        return self.norm(hidden_states + self.ffn_fc2(self.act(self.ffn_fc1(hidden_states))))


class BcQLMPreTrainedModel(PreTrainedModel):
    config: BcQLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BcQLMQGCAM"]
    # BreezeCLIP (30M parameters: convolutions, batch norms and the small encoders) stays in full precision under
    # fp16, bf16 and bitsandbytes loading; the decoder, the adapter and Q-GCAM are converted. Patterns match module
    # names from their start: `model.breezeclip` in the generation model, `breezeclip` in `BcQLMModel`.
    _keep_in_fp32_modules = ["model.breezeclip", "breezeclip"]
    _keep_in_fp32_modules_strict = ["model.breezeclip", "breezeclip"]
    _supports_sdpa = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        _fit_4bit_cpu_kernels(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded


def _fit_4bit_cpu_kernels(model: nn.Module) -> None:
    """
    bitsandbytes' 4-bit kernel for CPUs with AVX512-BF16 repacks a layer's weights at its first call, and takes only
    layers with a multiple of 32 outputs and of the quantization block's size of inputs (it asserts on others, such as
    Q-GCAM's one-output gate): those layers use bitsandbytes' generic 4-bit path instead.
    """
    for module in model.modules():
        quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(module, "support_avx512bf16_for_cpu", False) and quant_state is not None:
            if module.out_features % 32 or module.in_features % quant_state.blocksize:
                module.support_avx512bf16_for_cpu = False


class BcQLMModel(BcQLMPreTrainedModel):
    """BreezeCLIP towers, the visual adapter, Q-GCAM and the decoder, without the language-modelling head."""

    def __init__(self, config: BcQLMConfig):
        super().__init__(config)
        self.breezeclip = BreezeCLIPModel._from_config(config.breezeclip_config)
        self.visual_adapter = nn.Linear(config.breezeclip_config.projection_dim, config.text_config.hidden_size)
        self.qgcam = BcQLMQGCAM(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.FloatTensor) -> BaseModelOutputWithPooling:
        """
        Question-independent visual tokens in the decoder's width: BreezeCLIP's image features through the adapter.

        Args:
            pixel_values: `(num_images, num_channels, height, width)`.

        Returns:
            `BaseModelOutputWithPooling` whose `pooler_output` holds the visual tokens `(num_images, image_seq_length,
            hidden_size)` (the `image_features` input of `forward`), `last_hidden_state` BreezeCLIP's projected patch
            features `(num_images, num_patches, projection_dim)`, and `hidden_states` the image tower's.
        """
        image_outputs = self._image_tower(pixel_values)
        image_outputs.pooler_output = self.adapt_vision_features(self._vision_features(image_outputs))
        return image_outputs

    def get_vision_features(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        """
        BreezeCLIP's visual tokens before the adapter, as `vision_feature_mode` selects them: `(num_images,
        image_seq_length, projection_dim)` (the `vision_features` input of `forward`). Training with BreezeCLIP frozen
        can compute them once per image.
        """
        return self._vision_features(self._image_tower(pixel_values))

    def adapt_vision_features(self, vision_features: torch.Tensor) -> torch.Tensor:
        """The visual adapter: `(num_images, image_seq_length, projection_dim)` -> `(..., hidden_size)`."""
        expected = (self.config.image_seq_length, self.config.breezeclip_config.projection_dim)
        if vision_features.dim() != 3 or tuple(vision_features.shape[1:]) != expected:
            raise ValueError(
                f"`vision_features` must have shape (num_images, {expected[0]}, {expected[1]}) as "
                f"`get_vision_features` returns them, got {tuple(vision_features.shape)}."
            )
        return self.visual_adapter(vision_features.to(self.get_input_embeddings().weight.dtype))

    def _image_tower(self, pixel_values: torch.FloatTensor) -> BaseModelOutputWithPooling:
        vision_config = self.config.breezeclip_config.vision_config
        expected = (vision_config.num_channels, vision_config.image_size, vision_config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values` must have shape (batch_size, {', '.join(map(str, expected))}), got "
                f"{tuple(pixel_values.shape)}. Prepare images with BcQLMProcessor / BcQLMImageProcessor."
            )
        return self.breezeclip.get_image_features(pixel_values)

    def _vision_features(self, image_outputs: BaseModelOutputWithPooling) -> torch.Tensor:
        if self.config.vision_feature_mode == "pooled":
            features = image_outputs.pooler_output[:, None]
        else:
            features = image_outputs.last_hidden_state
        return F.normalize(features, dim=-1) if self.config.normalize_features else features

    def get_question_features(
        self, question_input_ids: torch.LongTensor, question_attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """
        Question features in BreezeCLIP space for Q-GCAM.

        Questions may come padded on either side (a pipeline's generic collate pads every key on the decoder
        tokenizer's side, the left): their tokens are moved to the right padding MobileBERT expects, so its [CLS] token
        and positions do not depend on the padding (a stable sort, the identity for right-padded questions).

        Returns:
            `(tokens, pooled, mask)`: tokens `(batch_size, length, projection_dim)` (length 1 with
            `question_feature_mode="pooled"`), pooled `(batch_size, projection_dim)` and the tokens' mask or `None`.
        """
        mask = question_attention_mask
        if mask is not None:
            order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)
            question_input_ids, question_attention_mask = question_input_ids.gather(1, order), mask.gather(1, order)
        text_outputs = self.breezeclip.get_text_features(question_input_ids, question_attention_mask)
        tokens = text_outputs.last_hidden_state
        mask = question_attention_mask
        if self.config.qgcam_config.question_pooling == "mean" and mask is not None:
            weights = mask.to(tokens.dtype)[..., None]
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        elif self.config.qgcam_config.question_pooling == "mean":
            pooled = tokens.mean(1)
        else:
            pooled = text_outputs.pooler_output
        if self.config.question_feature_mode == "pooled":
            tokens, mask = text_outputs.pooler_output[:, None], None
        if self.config.normalize_features:
            tokens, pooled = F.normalize(tokens, dim=-1), F.normalize(pooled, dim=-1)
        return tokens, pooled, mask

    def get_fused_image_features(
        self,
        image_features: torch.Tensor,
        question_input_ids: torch.LongTensor,
        question_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Gate visual tokens with their question through Q-GCAM.

        Args:
            image_features: `(batch_size, image_seq_length, hidden_size)` from [`~BcQLMModel.get_image_features`].
            question_input_ids: `(batch_size, question_length)` ids of the question tokenizer.

        Returns:
            `(batch_size, image_seq_length, hidden_size)`.
        """
        _check_ids("question_input_ids", question_input_ids, question_attention_mask)
        expected = (self.config.image_seq_length, self.config.text_config.hidden_size)
        if image_features.dim() != 3 or tuple(image_features.shape[1:]) != expected:
            raise ValueError(
                f"`image_features` must have shape (batch_size, {expected[0]}, {expected[1]}) as "
                f"`get_image_features` returns them, got {tuple(image_features.shape)}."
            )
        if question_input_ids.shape[0] != image_features.shape[0]:
            raise ValueError(
                f"Got {image_features.shape[0]} images but {question_input_ids.shape[0]} questions: BcQLM pairs each "
                "image with exactly one question."
            )
        tokens, pooled, mask = self.get_question_features(question_input_ids, question_attention_mask)
        dtype = image_features.dtype  # BreezeCLIP may run in higher precision than the fusion
        return self.qgcam(image_features, tokens.to(dtype), pooled.to(dtype), mask)

    def embed_prompt(self, input_ids: torch.LongTensor, fused_features: torch.Tensor) -> torch.Tensor:
        """
        The decoder's input embeddings of `input_ids` `(batch_size, sequence_length)`, with the fused visual tokens
        `(batch_size, image_seq_length, hidden_size)` at the `<image>` placeholders: `(batch_size, sequence_length,
        hidden_size)`.
        """
        image_mask = input_ids == self.config.image_token_id
        self._check_placeholders(image_mask, fused_features)
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))
        return inputs_embeds.masked_scatter(image_mask[..., None], fused_features.to(inputs_embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        question_input_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        image_features: torch.FloatTensor | None = None,
        image_indices: torch.LongTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> BcQLMModelOutputWithPast:
        r"""
        image_features (`torch.FloatTensor` of shape `(batch_size, image_seq_length, hidden_size)`, *optional*):
            The `pooler_output` of [`~BcQLMModel.get_image_features`], passed instead of `pixel_values` to ask several
            questions about the same images without running the image tower again.
        vision_features (`torch.FloatTensor` of shape `(batch_size, image_seq_length, projection_dim)`, *optional*):
            [`~BcQLMModel.get_vision_features`] (before the adapter), passed instead of `pixel_values` when training
            with BreezeCLIP frozen: computed once per image, they still train the adapter
            ([`~modeling_bcqlm.training.precompute_vision_features`]).
        image_indices (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            The row of `pixel_values` (or `vision_features`, `image_features`) each prompt asks about, for training
            batches that hold several questions per image and each image once ([`BcQLMVQACollator`] builds them).
            Without it, row i goes with prompt i.

        Other keyword arguments go to the decoder: its key/value cache (`cache`; `past_key_values` before
        transformers 5.24), `use_cache`, `output_attentions`, `output_hidden_states`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if input_ids is not None:
            _check_ids("input_ids", input_ids, None)
        given = {"pixel_values": pixel_values, "image_features": image_features, "vision_features": vision_features}
        given = [name for name, value in given.items() if value is not None]
        if len(given) > 1:
            raise ValueError(
                f"Pass one of `pixel_values`, `vision_features` or `image_features` (the same image at three stages), "
                f"got {', '.join(given)}."
            )

        fused_features = None
        if given:
            if input_ids is None:
                raise ValueError("Images need `input_ids` holding the `<image>` placeholder tokens.")
            if question_input_ids is None:
                raise ValueError(
                    "Images need `question_input_ids` (the question for the question encoder); build the inputs with "
                    "BcQLMProcessor."
                )
            if pixel_values is not None:
                image_features = self.get_image_features(pixel_values).pooler_output
            elif vision_features is not None:
                image_features = self.adapt_vision_features(vision_features)
            if image_indices is not None:
                image_features = self._select_images(image_features, image_indices, len(input_ids))
            fused_features = self.get_fused_image_features(image_features, question_input_ids, question_attention_mask)
            inputs_embeds = self.embed_prompt(input_ids, fused_features)
        elif inputs_embeds is None:
            if _cached_length(kwargs) == 0 and (input_ids == self.config.image_token_id).any():
                raise ValueError(
                    "The prompt holds `<image>` placeholder tokens but no `pixel_values` were given; pass the image "
                    "through BcQLMProcessor(images=..., text=...)."
                )
            inputs_embeds = self.get_input_embeddings()(input_ids)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return BcQLMModelOutputWithPast(**outputs, image_hidden_states=fused_features)

    @staticmethod
    def _select_images(image_features: torch.Tensor, image_indices: torch.LongTensor, batch_size: int) -> torch.Tensor:
        if image_indices.shape != (batch_size,) or image_indices.dtype != torch.long:
            raise ValueError(
                f"`image_indices` must be a LongTensor of shape ({batch_size},), one image row per prompt, got "
                f"{image_indices.dtype} of shape {tuple(image_indices.shape)}."
            )
        return image_features[image_indices]

    def _check_placeholders(self, image_mask: torch.Tensor, image_features: torch.Tensor) -> None:
        batch_size, image_seq_length = image_features.shape[:2]
        if image_mask.shape[0] != batch_size:
            raise ValueError(
                f"Got {batch_size} images for {image_mask.shape[0]} prompts: BcQLM takes exactly one image per prompt."
            )
        per_prompt = image_mask.sum(-1)
        if (per_prompt != image_seq_length).any():
            raise ValueError(
                f"Each prompt must hold exactly {image_seq_length} `<image>` tokens (one image), found "
                f"{per_prompt.tolist()}. Build the inputs with BcQLMProcessor, whose `image_seq_length` must match "
                "the model's config."
            )


class BcQLMForConditionalGeneration(BcQLMPreTrainedModel, GenerationMixin):
    """BcQLM for visual question answering: [`BcQLMModel`] with a language-modelling head."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: BcQLMConfig):
        super().__init__(config)
        self.model = BcQLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def get_image_features(self, pixel_values: torch.FloatTensor) -> BaseModelOutputWithPooling:
        """The visual tokens of `pixel_values` in `pooler_output`; see [`BcQLMModel.get_image_features`]."""
        return self.model.get_image_features(pixel_values)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        question_input_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        image_features: torch.FloatTensor | None = None,
        image_indices: torch.LongTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> BcQLMCausalLMOutputWithPast:
        r"""
        Args:
            input_ids: `(batch_size, sequence_length)` decoder prompt ids holding `image_seq_length` `<image>` tokens
                per image.
            pixel_values: `(batch_size, 3, image_size, image_size)`, one image per prompt.
            question_input_ids: `(batch_size, question_length)` ids of the question tokenizer (question alone).
            image_features: `(batch_size, image_seq_length, hidden_size)`, the `pooler_output` of
                `get_image_features`, instead of `pixel_values`: several questions about one image run its tower once.
            image_indices: `(batch_size,)`, the row of `pixel_values` each prompt asks about (training batches that
                hold each image once); not for `generate`, which takes one image per prompt.
            vision_features: `(batch_size, image_seq_length, projection_dim)`, `get_vision_features` (before the
                adapter), instead of `pixel_values`: training with BreezeCLIP frozen computes them once per image.
            labels: `(batch_size, sequence_length)` target ids, -100 where no loss is taken.
            kwargs: passed to the decoder, its key/value cache included (`cache`; `past_key_values` before
                transformers 5.24).

        Example:

        ```python
        >>> from modeling_bcqlm import BcQLMForConditionalGeneration, BcQLMProcessor
        >>> inputs = processor(images=image, text="What colour is the car?", return_tensors="pt")
        >>> answer_ids = model.generate(**inputs, max_new_tokens=10)
        >>> processor.post_process_image_text_to_text(answer_ids)
        ```"""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            question_input_ids=question_input_ids,
            question_attention_mask=question_attention_mask,
            image_features=image_features,
            image_indices=image_indices,
            vision_features=vision_features,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )

        # Everything but the last hidden state, the cache under the name of the installed transformers.
        decoder_outputs = {key: value for key, value in outputs.items() if key != "last_hidden_state"}
        return BcQLMCausalLMOutputWithPast(loss=loss, logits=logits, **decoder_outputs)

    def prepare_inputs_for_generation(
        self,
        input_ids,
        question_input_ids=None,
        question_attention_mask=None,
        image_features=None,
        vision_features=None,
        use_cache=True,
        is_first_iteration=False,
        **kwargs,
    ):
        if kwargs.get("image_indices") is not None:
            # `generate` repeats every input per beam or sample, which would break the rows they point at.
            raise ValueError(
                "`image_indices` is for training batches; `generate` takes one image per prompt: repeat the pixel "
                "values, or pass `image_features=model.get_image_features(pixel_values).pooler_output[image_indices]`."
            )
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, use_cache=use_cache, is_first_iteration=is_first_iteration, **kwargs
        )
        # Like `pixel_values`, the question and image features are only needed on prefill.
        if is_first_iteration or not use_cache:
            model_inputs["question_input_ids"] = question_input_ids
            model_inputs["question_attention_mask"] = question_attention_mask
            model_inputs["image_features"] = image_features
            model_inputs["vision_features"] = vision_features
        return model_inputs


__all__ = [
    "BreezeCLIPPreTrainedModel",
    "BreezeCLIPModel",
    "BcQLMPreTrainedModel",
    "BcQLMModel",
    "BcQLMForConditionalGeneration",
]
