"""The `lmforge` command line: one module per subcommand, each built on the public Python API."""
