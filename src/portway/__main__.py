"""``python -m portway`` runs the command line, exactly as the ``portway`` script does."""

from portway.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
