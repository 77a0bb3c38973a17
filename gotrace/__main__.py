"""Entry point for `python -m gotrace`."""

from gotrace.cli import main

if __name__ == "__main__":
    main()
