// The extension module gh_kernels._C: importing it runs the TORCH_LIBRARY_IMPL registrations of
// csrc/cpu (and csrc/cuda when built with CUDA). The ops' schemas and fake kernels are defined
// once, in Python (gh_kernels/ops/library.py), so this module exposes no functions of its own.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      NULL,  // documentation
      -1,    // per-interpreter state size
      NULL,  // methods
  };
  return PyModule_Create(&module_def);
}
}
