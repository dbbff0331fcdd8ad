"""Operations: logs, metrics and status, sd_notify, drain on SIGTERM, the TOML config file."""
