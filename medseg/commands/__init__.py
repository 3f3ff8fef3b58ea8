"""The ``medseg`` subcommands: one thin module per command (``add_parser`` + ``run``)."""
