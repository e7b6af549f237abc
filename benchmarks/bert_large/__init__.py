"""BERT-Large masked-LM pre-training on the MLPerf HDF5 shards."""
