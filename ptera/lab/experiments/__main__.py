"""``python -m ptera.lab.experiments run|status|plot CONFIG [options]``."""

from .cli import main

if __name__ == "__main__":
    main()
