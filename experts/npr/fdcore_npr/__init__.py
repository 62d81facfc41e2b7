"""fdcore plugin: the NPR forensic expert (Tan et al., CVPR 2024). Importing this module loads neither torch nor
transformers."""

import fdcore


@fdcore.hookimpl
def register_experts(register):
    from fdcore_npr.expert import NPRExpert  # torch loads here, when fdcore asks for experts

    register(NPRExpert)
