"""fdcore plugin: FeatDistill's SigLIP So400M expert. Importing this module loads neither torch nor transformers."""

import fdcore


@fdcore.hookimpl
def register_experts(register):
    from fdcore_siglip.expert import SiglipExpert  # torch and transformers load here, when fdcore asks for experts

    register(SiglipExpert)
