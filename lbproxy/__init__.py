"""lbproxy: asyncio + uvloop L4 TCP proxy over healthy backends."""
