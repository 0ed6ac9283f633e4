"""Bearer-token checks for the web channel: Microsoft Entra ID (RS256) and local accounts (HS256)."""
