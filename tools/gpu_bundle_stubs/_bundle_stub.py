"""Placeholders in the GPU bundle (tools/gpu_bundle.sh) for scikit-image and scipy: pycaffe's caffe.io imports them
at `import caffe` for its image helpers, which the project never calls, and the real packages (150 MB) do not fit
in what a GPU-machine call carries.  Any use raises ImportError naming the bundle; nothing is silently replaced."""


def module_getattr(module: str):
    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise ImportError("%s.%s is not in the GPU bundle (tools/gpu_bundle.sh carries no %s): only pycaffe's "
                              "caffe.io uses it, and the project does not" % (module, name, module.split(".")[0]))
        missing.__name__ = name
        return missing
    return __getattr__
