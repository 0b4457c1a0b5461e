"""Training and evaluation: tf.data over the dataset contract, ResNets, a multi-worker loop, reports."""
