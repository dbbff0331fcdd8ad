"""``python -m relay``: the same as the ``relay`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
