"""The core: label-noise SGD on many chains at once and the implicit regularizer, for functional models
h(params, x) and for any torch.nn.Module. It imports nothing from nblib.book or nblib.chapters."""
