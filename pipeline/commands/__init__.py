"""The toolkit's command-line programs, one module each with ``main(argv) -> exit status``: the top of the import
order (pipeline/README.md), imported by nothing in the library. ``scripts/NAME.py`` and ``train.py`` are thin files
that call them; ``sr-fusion NAME`` (pipeline/app.py) runs them as subcommands."""
