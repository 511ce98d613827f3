"""The device side: the MCU's part of a trained AgileNN as int8 TFLite for TFLite Micro.

``export.export`` is the entry point (``launch/export.py``); ``tflite`` lowers and converts,
``tflm`` runs the model on TFLite Micro, ``int8`` holds the integer arithmetic the MCU and the
codec share, ``cost`` the STM32F746 budgets and cycle model, ``firmware`` the C files. This
package reads trained runs through ``agilenn_jax.inference`` and never imports training code.
"""
