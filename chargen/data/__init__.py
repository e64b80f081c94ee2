"""From any text to batches of ids: sources, named corpora, the vocabulary, the prepared cache, batches.

``sources`` turns a SOURCE (file, folder, glob, registry name, ``hf:`` dataset)
into documents; ``registry`` and ``hf`` find named corpora and Hugging Face
datasets; ``vocab`` is the character vocabulary on ``tokenizers``; ``prepared``
writes the ids to a cache folder named by a fingerprint; ``batches`` cuts them
into stateful streams or random windows. Nothing is imported here, so that
importing one module never pulls in torch (``batches`` needs it).
"""
