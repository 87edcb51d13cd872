"""camtrack's entry point: `python server.py --help`."""

from camtrack.cli import main

if __name__ == "__main__":
    main()
