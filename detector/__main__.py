"""``python -m detector`` runs the ``counterfeit`` command line."""

from detector.cli import main

main()
