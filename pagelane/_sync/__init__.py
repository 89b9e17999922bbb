"""The blocking client, generated from ``pagelane._async`` by ``python -m pagelane._codegen``."""
