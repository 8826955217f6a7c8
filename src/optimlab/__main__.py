from optimlab.cli import main

main()
