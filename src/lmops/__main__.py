from lmops.cli import main

main()
