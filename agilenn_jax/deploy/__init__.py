"""The device side: the MCU's part of a trained AgileNN, as int8 TFLite and as generated C.

``export.export`` (``launch/export.py``) lowers and converts (``tflite``), verifies on TFLite
Micro (``tflm``) and writes the TFLM application files (``tflm_app``); ``int8`` holds the integer
arithmetic the MCU and the codec share, ``cost`` the STM32F746 budgets and MAC-based estimate.
``firmware.check`` (``launch/firmware.py``) turns an export into C: ``codegen`` (reading the
flatbuffer with ``tflite_graph``) writes the model library for the portable or CMSIS-NN
kernels in ``csrc/``, ``encoder`` the entropy encoder's tables, and ``mcu`` builds the host
and Cortex-M7 programs and runs them (QEMU). This package reads trained runs through
``agilenn_jax.inference`` and never imports training code.
"""
