"""TCP relay over yamux: expose a service behind NAT on a public port."""
