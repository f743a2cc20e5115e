"""`python -m pipeline` is `llmspend`."""

from pipeline.cli import main

main()
