"""`python -m ovmftool`."""

from ovmftool.cli import main

if __name__ == "__main__":
    main()
