"""The network and where it runs: ``network`` (CharRNN: embedding, LSTM/GRU stack, output layer),
``devices`` (``--device`` and ``--precision``, autocast) and ``scoring`` (log-probabilities with the
state carried across pieces; the validation sample). Every module here needs torch; nothing is
imported eagerly."""
