from cifarflow.cli import main

main()
