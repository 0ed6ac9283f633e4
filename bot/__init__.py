"""The chat side: channels, commands, access, sessions and the use cases that join them."""
