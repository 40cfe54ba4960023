"""Hub configurations (one YAML per published model), installed as ``timm_asap_lab.hub_configs``."""
