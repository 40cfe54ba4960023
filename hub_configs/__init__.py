"""Hub configurations (one YAML per published model), installed as ``timm_asap.hub_configs``."""
