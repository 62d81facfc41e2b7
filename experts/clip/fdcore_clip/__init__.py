"""fdcore plugin: FeatDistill's CLIP ViT-L/14 expert. Importing this module loads neither torch nor transformers."""

import fdcore


@fdcore.hookimpl
def register_experts(register):
    from fdcore_clip.expert import ClipExpert  # torch and transformers load here, when fdcore asks for experts

    register(ClipExpert)
