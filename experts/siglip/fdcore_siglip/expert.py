"""The SigLIP expert: ``SiglipVisionModel`` (So400M/14, 384 px) -> pooler_output (1152) -> FeatDistill's head.

Scores match FeatDistill's released SigLIP experts: same module layout (``vision_encoder``, ``classifier``), same
pooled output (the attention-pooling head's output) and the same preprocessing (bicubic short-side resize to 384,
long side truncated, centre crop, mean 0.5 / std 0.5).
"""

from fdcore.hf_expert import HFVisionExpert

# google/siglip-so400m-patch14-384, vision_config: the architecture FeatDistill's SigLIP experts use.
SIGLIP_SO400M_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "patch_size": 14,
    "image_size": 384,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
    "vision_use_head": True,
}


class SiglipExpert(HFVisionExpert):
    """SigLIP So400M/14 vision tower; pooler_output -> Linear(1152,256) -> ReLU -> Dropout -> Linear(256,2)."""

    name = "siglip"
    description = "SigLIP So400M/14 attention-pooled output -> MLP head (FeatDistill); 384 px, bicubic, mean/std 0.5"
    featdistill_tag = "siglip"
    model_class_name = "SiglipVisionModel"
    config_class_name = "SiglipVisionConfig"
    default_backbone = "google/siglip-so400m-patch14-384"
    default_architecture = SIGLIP_SO400M_384
    # 44 is not a multiple of 14, like 384: the patch grid is floor(44 / 14) = 3 per side, as in the real model.
    tiny_architecture = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "patch_size": 14, "image_size": 44}
    pooled_output = "pooler_output"
    pooled_dim_key = "hidden_size"
    prefix_tokens = 0  # no class token: every token is a patch
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
