"""Two-stage training of one fdcore expert: stage 1 BCE, stage 2 dense feature self-distillation (or CRD).

    accelerate launch --config_file recipes/configs/cpu.yaml recipes/two_stage.py --expert clip \
        --init random --backbone-config tiny_clip.json --data real_fake_folder --output-dir runs/clip-tiny
    accelerate launch --config_file recipes/configs/two_gpu_fp16.yaml recipes/two_stage.py --expert siglip \
        --backbone google/siglip-so400m-patch14-384 --data ntire=/data/ntire:3 --data ditfake=/data/ditfake:1 \
        --batch-size 128 --output-dir runs/siglip-1
    accelerate launch ... recipes/two_stage.py --output-dir runs/siglip-1 --resume

The recipe lives in the package (fdcore/recipes/two_stage.py, where its full documentation is) so that an installed
fdcore, `fdcore train` and `fdcore demo` run exactly the same code as this launcher.
"""

from fdcore.recipes.two_stage import main

if __name__ == "__main__":
    main()
