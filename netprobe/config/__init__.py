"""Configuration: typed settings (schema), daemon defaults, TOML loading."""
