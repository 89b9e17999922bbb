"""The asyncio client, the source the blocking one (``pagelane._sync``) is generated from."""
