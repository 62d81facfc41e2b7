"""`fdcore train`: the two-stage recipe in this process (use `accelerate launch recipes/two_stage.py` for several)."""

import click


@click.command("train", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                          "help_option_names": []})
@click.pass_context
def command(ctx):
    """Train one expert with the two-stage recipe (options: fdcore train --help)."""
    from fdcore.recipes.two_stage import main

    main(list(ctx.args))
