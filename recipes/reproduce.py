"""A miniature reproduction of FeatDistill's Table 2 on real AI-generated images, on CPU.

    python recipes/reproduce.py --data ../shared/data/aigc-sd1x --out runs/reproduce
    python recipes/reproduce.py --data ../shared/data/aigc-sd1x --out runs/reproduce-smoke --size smoke

The code lives in the package (fdcore/recipes/reproduce.py, with its full documentation); docs/results.md has the
measured tables and how they were made.
"""

from fdcore.recipes.reproduce import main

if __name__ == "__main__":
    main()
