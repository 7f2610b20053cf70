"""One module per ``deepcompress`` sub-command: ``add_arguments(parser, name)`` and ``main(args)``."""
