"""`python -m ptxseg` runs the command-line interface."""

from ptxseg.cli import main

if __name__ == "__main__":
    main()
