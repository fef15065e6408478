"""``python -m pyrovae``: the same command line as ``pyrovae``."""

from pyrovae.cli import main

if __name__ == "__main__":
    main(prog_name="pyrovae")
