"""Cloud and host back ends that create and destroy WireGuard servers, plus the WireGuard model they share."""
