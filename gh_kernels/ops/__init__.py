"""The ops layer: the custom ops' schemas and fake kernels (``library.py``), the constants shared with
C++/CUDA/Triton (``constants.py``), argument checks with errors that name the argument and index
(``validate.py``, and the ``out=`` memory rules in ``memory.py``), and the validated calls into the
chosen backend's overload (``dispatch.py``). Nothing here knows about methods or training steps."""
