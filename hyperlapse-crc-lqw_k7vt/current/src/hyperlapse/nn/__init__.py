"""Encoder layers (one file per layer, PyG style) and the hyperbolic temporal encoder.

* :mod:`.hyp_linear` -- ``exp0(W log0 h)``;
* :mod:`.hyp_attention` -- multi-head hyperbolic graph attention in both MLP directions;
* :mod:`.kernel_evolution` -- EvolveGCN-style GRU generating the attention kernels;
* :mod:`.window_attention` -- order-free attention over the last ``w`` states + tangent GRU;
* :mod:`.fermi_dirac`, :mod:`.signed_weight` -- link and signed-weight heads;
* :mod:`.change_decoder` -- a closed-form forecast plus a learned correction, zero at init;
* :mod:`.snapshot` -- the encoder's view of a parameter graph (sparsified edges);
* :mod:`.encoder` -- :class:`~hyperlapse.nn.encoder.TemporalEncoder` and its step API.

Submodules are imported on use (``from hyperlapse.nn.encoder import TemporalEncoder``).
"""
