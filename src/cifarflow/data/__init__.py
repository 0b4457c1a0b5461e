"""The data plane: CIFAR formats, synthetic archives, ingest, the Spark preprocessing job, dataset manifests."""
