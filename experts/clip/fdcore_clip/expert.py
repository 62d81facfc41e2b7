"""The CLIP expert: ``CLIPVisionModelWithProjection`` (ViT-L/14, 224 px) -> image_embeds (768) -> FeatDistill's head.

Scores match FeatDistill's released CLIP experts: same module layout (``vision_encoder``, ``classifier``), same
pooled output (the projected, post-layer-normed class token) and the same preprocessing (bicubic short-side resize
to 224, long side truncated, centre crop, CLIP normalisation).
"""

from fdcore.hf_expert import HFVisionExpert

# openai/clip-vit-large-patch14, vision_config: the architecture FeatDistill's CLIP experts use.
CLIP_VIT_L14 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

# OpenAI CLIP's training-set statistics (its image processor's image_mean / image_std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipExpert(HFVisionExpert):
    """CLIP ViT-L/14 vision tower + projection; image_embeds -> Linear(768,256), ReLU, Dropout, Linear(256,2)."""

    name = "clip"
    description = "CLIP ViT-L/14 image embeddings -> MLP head (FeatDistill); 224 px, bicubic, CLIP mean/std"
    featdistill_tag = "clip"
    model_class_name = "CLIPVisionModelWithProjection"
    config_class_name = "CLIPVisionConfig"
    default_backbone = "openai/clip-vit-large-patch14"
    default_architecture = CLIP_VIT_L14
    tiny_architecture = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "patch_size": 14, "image_size": 56, "projection_dim": 16}
    pooled_output = "image_embeds"
    pooled_dim_key = "projection_dim"
    prefix_tokens = 1  # the class token
    mean = CLIP_MEAN
    std = CLIP_STD
