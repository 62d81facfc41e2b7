from fdcore.cli import main

main()
