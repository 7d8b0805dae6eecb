from pypi_mirror.cli import main

main()
