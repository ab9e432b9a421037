"""``python -m synthpipe``: the ``synthpipe`` command."""

from synthpipe.cli import main

if __name__ == "__main__":
    main()
