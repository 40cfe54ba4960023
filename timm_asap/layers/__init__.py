"""Spectral pooling layers: ASAP and FLC, in the fast exact matrix form and the FFT formulation."""
from timm.layers import register_notrace_module

from timm_asap.layers.asap import ASAP2d, asap_pool2d
from timm_asap.layers.backends import BACKEND_ENV, BACKENDS, get_backend, set_backend
from timm_asap.layers.band import ASAP_PADDINGS, MODES, POOLS, BandSpec, band_spec, output_size
from timm_asap.layers.create import create_pool, pool_arguments
from timm_asap.layers.fft_pool import ASAP2dFFT, FLC2dFFT, asap_pool2d_fft, flc_pool2d_fft
from timm_asap.layers.flc import FLC2d, flc_pool2d
from timm_asap.layers.spectral_matrix import axis_matrix, clear_cache

# timm's FX feature extraction treats the pooling layers as leaves (their shapes drive Python logic).
for _cls in (ASAP2d, FLC2d, ASAP2dFFT, FLC2dFFT):
    register_notrace_module(_cls)

__all__ = [
    'ASAP2d', 'FLC2d', 'ASAP2dFFT', 'FLC2dFFT', 'asap_pool2d', 'flc_pool2d', 'asap_pool2d_fft', 'flc_pool2d_fft',
    'create_pool', 'pool_arguments', 'output_size', 'band_spec', 'BandSpec', 'axis_matrix', 'clear_cache',
    'POOLS', 'MODES', 'ASAP_PADDINGS', 'set_backend', 'get_backend', 'BACKENDS', 'BACKEND_ENV',
]
