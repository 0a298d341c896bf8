from gateway.config.loader import DEFAULT_PATH, load_config, parse_config, parse_config_text
from gateway.config.schema import Config

__all__ = ["DEFAULT_PATH", "Config", "load_config", "parse_config", "parse_config_text"]
