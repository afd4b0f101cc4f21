"""Running the gateway: the aiohttp application (composition root), the listening server and
its shutdown, and config reloads."""
