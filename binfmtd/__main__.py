from binfmtd.cli import main

main()
