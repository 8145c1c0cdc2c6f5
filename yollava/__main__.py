"""``python -m yollava``: the command line (also how ``accelerate launch -m yollava ablate ...`` starts ranks)."""

from yollava.cli import main

if __name__ == "__main__":
    main()
