"""The online half: the wire (``codec`` frames, ``protocol`` messages and authentication), the
remote-NN ``server``, the device ``client`` and the end-to-end ``evaluation`` of a deployment.
Reads trained runs through ``agilenn_jax.inference`` and never imports training code.
"""
