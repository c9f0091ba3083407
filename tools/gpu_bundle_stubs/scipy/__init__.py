"""GPU bundle placeholder of scipy (tools/gpu_bundle_stubs/_bundle_stub.py): every attribute raises ImportError."""
from _bundle_stub import module_getattr

__getattr__ = module_getattr("scipy")
