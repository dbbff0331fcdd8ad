"""The relay's side: admission, registered sessions, public listeners, ports, leases, auth."""
